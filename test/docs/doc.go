// Package docs runs the documentation: every shell command shown in README.md and docs/*.md, as
// written, so that none can drift from the code (tests only; the rules are in docs_test.go).
package docs
