package main

import (
	"encoding/json"
	"regexp"
	"strings"

	"github.com/fieldota/fieldota/download"
)

// redactURLs returns v as generic JSON with every http(s) URL that carries a query, userinfo or
// fragment redacted, wherever it appears in a string: the journal keeps the job document as
// received, and its presigned URLs are bearer credentials for up to an hour (X-Amz-Signature,
// X-Amz-Credential, X-Amz-Security-Token).
func redactURLs(v any) (any, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return nil, err
	}
	var g any
	if err := json.Unmarshal(b, &g); err != nil {
		return nil, err
	}
	return redactValue(g), nil
}

func redactValue(v any) any {
	switch x := v.(type) {
	case map[string]any:
		for k, e := range x {
			x[k] = redactValue(e)
		}
	case []any:
		for i, e := range x {
			x[i] = redactValue(e)
		}
	case string:
		return urlInText.ReplaceAllStringFunc(x, func(u string) string {
			if strings.ContainsAny(u, "?@#") {
				return download.Redact(u)
			}
			return u
		})
	}
	return v
}

// urlInText matches an http(s) URL up to the first character a URL in JSON or prose ends at.
var urlInText = regexp.MustCompile(`(?i)https?://[^\s"'<>\\]+`)
