package jobdoc

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"

	"github.com/fieldota/fieldota/ota/names"
	"github.com/fieldota/fieldota/ota/reason"
)

// invalid builds an INVALID_DOCUMENT error whose message is the whole sentence, the cause's
// own words included ("files[0].fileName: \"../x\" is not a base name"). A %w argument stays the
// cause, so a malformed signature also matches SIGNATURE_INVALID.
func invalid(format string, args ...any) error {
	var cause error
	shown := make([]any, len(args))
	for i, a := range args {
		shown[i] = a
		if err, ok := a.(error); ok {
			cause = err
			shown[i] = sentence(err)
		}
	}
	msg := fmt.Sprintf(strings.ReplaceAll(format, "%w", "%s"), shown...)
	return &reason.Error{Code: reason.InvalidDocument, Msg: msg, Err: cause}
}

// sentence is an error's words without a reason code in front (the code shown is ours).
func sentence(err error) string {
	var re *reason.Error
	if errors.As(err, &re) && re.Msg != "" {
		return re.Msg
	}
	return err.Error()
}

// checkStructure walks the tokens once: the document must be one JSON object, nested at most
// maxDepth deep, with no duplicate key in any object (two parsers could read different values).
func checkStructure(data []byte) error {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	type frame struct {
		obj       bool
		expectKey bool
		keys      map[string]bool
	}
	var stack []*frame
	values := 0
	valueDone := func() {
		if len(stack) == 0 {
			values++
		} else if top := stack[len(stack)-1]; top.obj {
			top.expectKey = true
		}
	}
	for {
		tok, err := dec.Token()
		if err == io.EOF {
			break
		}
		if err != nil {
			return fmt.Errorf("not JSON: %w", err)
		}
		if len(stack) == 0 && values == 0 {
			if d, ok := tok.(json.Delim); !ok || d != '{' {
				return errors.New("the document must be a JSON object")
			}
		}
		if len(stack) == 0 && values > 0 {
			return errors.New("data after the document")
		}
		if n := len(stack); n > 0 && stack[n-1].obj && stack[n-1].expectKey {
			if d, ok := tok.(json.Delim); ok && d == '}' {
				stack = stack[:n-1]
				valueDone()
				continue
			}
			k := tok.(string)
			if stack[n-1].keys[k] {
				return fmt.Errorf("key %q appears twice", names.Clip(k))
			}
			stack[n-1].keys[k] = true
			stack[n-1].expectKey = false
			continue
		}
		switch v := tok.(type) {
		case json.Delim:
			switch v {
			case '{', '[':
				if len(stack) >= maxDepth {
					return fmt.Errorf("nested deeper than %d", maxDepth)
				}
				stack = append(stack, &frame{obj: v == '{', expectKey: v == '{', keys: map[string]bool{}})
			case ']':
				stack = stack[:len(stack)-1]
				valueDone()
			}
		default:
			valueDone()
		}
	}
	if values != 1 {
		return errors.New("the document must be one JSON object")
	}
	return nil
}

// Field readers: strict JSON types, null refused.

func reqString(m map[string]json.RawMessage, k string) (string, error) {
	if _, ok := m[k]; !ok {
		return "", invalid("%s is required", k)
	}
	s, err := optString(m, k)
	if err == nil && s == "" {
		return "", invalid("%s must not be empty", k)
	}
	return s, err
}

func optString(m map[string]json.RawMessage, k string) (string, error) {
	raw, ok := m[k]
	if !ok {
		return "", nil
	}
	if firstByte(raw) != '"' {
		return "", invalid("%s must be a string", k)
	}
	var s string
	if err := json.Unmarshal(raw, &s); err != nil {
		return "", invalid("%s: %w", k, err)
	}
	return s, nil
}

// optBool reads true/false, also as the strings "true"/"false" (the seed writes a string);
// nil when absent.
func optBool(m map[string]json.RawMessage, k string) (*bool, error) {
	raw, ok := m[k]
	if !ok {
		return nil, nil
	}
	var v bool
	switch string(bytes.TrimSpace(raw)) {
	case "true", `"true"`:
		v = true
	case "false", `"false"`:
	default:
		return nil, invalid("%s must be true, false, \"true\" or \"false\"", k)
	}
	return &v, nil
}

func reqInt(m map[string]json.RawMessage, k string) (int64, error) {
	raw, ok := m[k]
	if !ok {
		return 0, invalid("%s is required", k)
	}
	t := string(bytes.TrimSpace(raw))
	if t == "" || !(t[0] == '-' || t[0] >= '0' && t[0] <= '9') {
		return 0, invalid("%s must be an integer", k)
	}
	n, err := strconv.ParseInt(t, 10, 64)
	if err != nil {
		return 0, invalid("%s must be an integer, got %s", k, names.Clip(t))
	}
	return n, nil
}

// prefix puts the entry's position in front of a field refusal ("files[0]." + "size is required").
func prefix(at string, err error) error {
	var re *reason.Error
	if errors.As(err, &re) {
		return &reason.Error{Code: re.Code, Msg: at + "." + re.Msg, Err: re.Err}
	}
	return err
}

func isNull(raw json.RawMessage) bool { return string(bytes.TrimSpace(raw)) == "null" }

func firstByte(raw json.RawMessage) byte {
	t := bytes.TrimSpace(raw)
	if len(t) == 0 {
		return 0
	}
	return t[0]
}
