-- Argo CD health check for finetune.dev/FineTuneJob.
-- Install: add this script under resource.customizations.health.finetune.dev_FineTuneJob
-- in the argocd-cm ConfigMap (argocd-cm-patch.yaml beside this file does exactly that).
local hs = {}
if obj.status == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to pick up the job"
  return hs
end
local status = obj.status
local generation = obj.metadata.generation
if generation ~= nil and status.observedGeneration ~= nil and status.observedGeneration < generation then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe generation " .. generation
  return hs
end
if status.conditions ~= nil then
  for _, condition in ipairs(status.conditions) do
    if condition.type == "Stalled" and condition.status == "True" then
      hs.status = "Degraded"
      hs.message = condition.message or condition.reason
      return hs
    end
  end
end
local phase = status.phase
if phase == "Succeeded" then
  hs.status = "Healthy"
  hs.message = status.message or "Training finished"
elseif phase == "Failed" then
  hs.status = "Degraded"
  hs.message = status.message or "Training failed"
elseif phase == "Suspended" then
  hs.status = "Suspended"
  hs.message = status.message or "Suspended"
else
  hs.status = "Progressing"
  local message = status.message or "Training"
  if status.progress ~= nil and status.progress.percent ~= nil then
    message = message .. " (" .. status.progress.percent .. "%)"
  end
  hs.message = message
end
return hs
