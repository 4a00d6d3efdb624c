//go:build tools

// This file only records kubectl's packages in go.mod/go.sum, so that
// `build.sh kubectl` can build k8s.io/kubernetes/cmd/kubectl at the pinned release
// on machines without a kubectl.
package main

import (
	_ "k8s.io/client-go/plugin/pkg/client/auth"
	_ "k8s.io/kubectl/pkg/cmd"
)
