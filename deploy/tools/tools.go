//go:build tools

// Package tools pins the Go tools nextbest's test tier builds: promtool checks
// and unit-tests the alerting rules in deploy/prometheus.
package tools

import _ "github.com/prometheus/prometheus/cmd/promtool"
