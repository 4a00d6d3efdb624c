"""The read-only web dashboard of FineTuneJobs (``finetune-dashboard``)."""
