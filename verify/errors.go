package verify

import (
	"fmt"
	"strings"

	"github.com/fieldota/fieldota/ota/reason"
)

// fail builds a *reason.Error. A trailing %w becomes the cause rather than part of the
// message, so Error() names the cause once.
func fail(code reason.Code, format string, args ...any) error {
	if n := len(args); n > 0 && strings.HasSuffix(format, "%w") {
		if cause, ok := args[n-1].(error); ok {
			msg := strings.TrimSuffix(strings.TrimSuffix(format, "%w"), ": ")
			return &reason.Error{Code: code, Msg: fmt.Sprintf(msg, args[:n-1]...), Err: cause}
		}
	}
	return reason.Errorf(code, format, args...)
}
