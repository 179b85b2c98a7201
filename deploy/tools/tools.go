//go:build tools

// Package tools pins the Go tools nextbest's test tier builds: promtool checks
// and unit-tests the alerting rules in deploy/prometheus; helm lints and renders
// the chart in helm/nextbest.
package tools

import (
	_ "github.com/prometheus/prometheus/cmd/promtool"
	_ "helm.sh/helm/v3/cmd/helm"
)
