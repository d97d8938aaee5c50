package s3

import (
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"strings"
)

// Server serves objects from a directory through presigned URLs, like S3 behind a presigned GET.
type Server struct {
	dir string
	p   *Presigner
}

// NewServer serves GET/HEAD /<bucket>/<key> from dir/<bucket>/<key> after p.Check.
func NewServer(dir string, p *Presigner) *Server {
	return &Server{dir: dir, p: p}
}

func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	obj, err := s.p.Check(r.URL)
	if err != nil {
		http.Error(w, "AccessDenied", http.StatusForbidden)
		return
	}
	clean := filepath.Clean("/" + obj)
	if strings.Contains(obj, "..") {
		http.Error(w, "NoSuchKey", http.StatusNotFound)
		return
	}
	f, err := os.Open(filepath.Join(s.dir, clean))
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			http.Error(w, "NoSuchKey", http.StatusNotFound)
			return
		}
		http.Error(w, "InternalError", http.StatusInternalServerError)
		return
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil || !fi.Mode().IsRegular() {
		http.Error(w, "NoSuchKey", http.StatusNotFound)
		return
	}
	http.ServeContent(w, r, "", fi.ModTime(), f)
}
