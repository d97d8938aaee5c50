package s3

import (
	"crypto/md5"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/fieldota/fieldota/ota/durable"
)

// Objects live as files: the current version of bucket/key at dir/bucket/key (so that a test can
// also drop a file there), every version written by PutObject into a versioned bucket at
// dir/.fieldota-s3/versions/<versionId>, hard-linked to the current path while it is current.
// Version metadata is kept in memory (the emulator has no persistence).

// metaDir holds the emulator's own files; it is not a bucket (S3 bucket names cannot start with '.').
const metaDir = ".fieldota-s3"

// Versioning states of a bucket (S3's VersioningConfiguration.Status; "" = never enabled).
const (
	VersioningEnabled   = "Enabled"
	VersioningSuspended = "Suspended"
)

// version is one stored version of an object.
type version struct {
	id       string // "null" for an unversioned put
	path     string // file holding this version's bytes
	size     int64
	etag     string
	modified time.Time
	meta     map[string]string // x-amz-meta-* (lower-case names without the prefix)
	ctype    string
}

type bucket struct {
	versioning string
	objects    map[string][]*version // key → versions, oldest first
}

// ErrNoSuchVersion is a versionId that the object never had.
var errNoSuchVersion = errors.New("the specified version does not exist")

func (s *Server) bucketDir(name string) string { return filepath.Join(s.dir, name) }

// bucketOf returns the bucket's state, creating it for a directory made behind the server's back.
func (s *Server) bucketOf(name string) *bucket {
	b := s.buckets[name]
	if b == nil {
		if st, err := os.Stat(s.bucketDir(name)); err != nil || !st.IsDir() {
			return nil
		}
		b = &bucket{objects: map[string][]*version{}}
		s.buckets[name] = b
	}
	return b
}

func (s *Server) createBucket(name string) (existed bool, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.bucketOf(name) != nil {
		return true, nil
	}
	if err := os.MkdirAll(s.bucketDir(name), 0o755); err != nil {
		return false, err
	}
	s.buckets[name] = &bucket{objects: map[string][]*version{}}
	return false, nil
}

// SetVersioning is PutBucketVersioning (Enabled or Suspended).
func (s *Server) SetVersioning(name, status string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	b := s.bucketOf(name)
	if b == nil {
		return fmt.Errorf("no bucket %s", name)
	}
	b.versioning = status
	return nil
}

func (s *Server) versioning(name string) (string, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	b := s.bucketOf(name)
	if b == nil {
		return "", false
	}
	return b.versioning, true
}

func newVersionID() string {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic(err) // crypto/rand does not fail on Linux
	}
	return hex.EncodeToString(b[:])
}

// putObject streams body into the bucket and returns the new version (id "null" when the bucket
// is not versioned). The current file is replaced atomically: a GET in flight keeps its bytes.
func (s *Server) putObject(bucketName, key string, body io.Reader, meta map[string]string, ctype string) (*version, error) {
	s.mu.Lock()
	b := s.bucketOf(bucketName)
	s.mu.Unlock()
	if b == nil {
		return nil, errNoSuchBucket
	}
	target, ok := s.objectFile(bucketName + "/" + key)
	if !ok {
		return nil, errBadKey
	}
	tmpDir := filepath.Join(s.dir, metaDir, "tmp")
	if err := os.MkdirAll(tmpDir, 0o700); err != nil {
		return nil, err
	}
	tmp, err := os.CreateTemp(tmpDir, "put-*")
	if err != nil {
		return nil, err
	}
	defer os.Remove(tmp.Name())
	h := md5.New()
	n, err := io.Copy(io.MultiWriter(tmp, h), body)
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return nil, err
	}
	v := &version{id: "null", size: n, etag: `"` + hex.EncodeToString(h.Sum(nil)) + `"`, modified: time.Now().UTC(),
		meta: meta, ctype: ctype}
	if err := os.MkdirAll(filepath.Dir(target), 0o755); err != nil {
		return nil, err
	}
	s.mu.Lock()
	status := b.versioning
	s.mu.Unlock()
	if status == VersioningEnabled {
		v.id = newVersionID()
		vdir := filepath.Join(s.dir, metaDir, "versions")
		if err := os.MkdirAll(vdir, 0o700); err != nil {
			return nil, err
		}
		v.path = filepath.Join(vdir, v.id)
		if err := durable.Rename(tmp.Name(), v.path); err != nil {
			return nil, err
		}
		// The current path becomes a second name of the version file, swapped in atomically.
		link := target + ".fieldota-link-" + v.id
		if err := os.Link(v.path, link); err != nil {
			return nil, err
		}
		if err := durable.Rename(link, target); err != nil {
			os.Remove(link)
			return nil, err
		}
	} else {
		v.path = target
		if err := durable.Rename(tmp.Name(), target); err != nil {
			return nil, err
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	l := b.objects[key]
	if v.id == "null" { // an unversioned put replaces the earlier null version
		kept := l[:0]
		for _, o := range l {
			if o.id != "null" {
				kept = append(kept, o)
			}
		}
		l = kept
	}
	b.objects[key] = append(l, v)
	return v, nil
}

var (
	errNoSuchBucket = errors.New("the specified bucket does not exist")
	errBadKey       = errors.New("bad object key")
)

// resolve finds the file to serve for bucket/key at versionID ("" = current) and its metadata
// (nil for a file placed in the directory by hand).
func (s *Server) resolve(obj, versionID string) (path string, v *version, err error) {
	bucketName, key, _ := strings.Cut(obj, "/")
	path, ok := s.objectFile(obj)
	if !ok || key == "" {
		return "", nil, errBadKey
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	b := s.bucketOf(bucketName)
	if b == nil {
		return "", nil, errNoSuchBucket
	}
	l := b.objects[key]
	if versionID != "" {
		for _, o := range l {
			if o.id == versionID {
				return o.path, o, nil
			}
		}
		return "", nil, errNoSuchVersion
	}
	if len(l) > 0 {
		cur := l[len(l)-1]
		if sameFile(cur.path, path) {
			return path, cur, nil
		}
	}
	return path, nil, nil // placed (or replaced) by hand: served as it is, without version metadata
}

func sameFile(a, b string) bool {
	fa, err1 := os.Stat(a)
	fb, err2 := os.Stat(b)
	return err1 == nil && err2 == nil && os.SameFile(fa, fb)
}

// listed is one entry of ListObjectsV2.
type listed struct {
	key      string
	size     int64
	etag     string
	modified time.Time
}

// list walks the bucket directory (so hand-placed files are listed too), in key order.
func (s *Server) list(bucketName, prefix string) ([]listed, error) {
	root := s.bucketDir(bucketName)
	var out []listed
	err := filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() || strings.Contains(d.Name(), ".fieldota-link-") {
			return nil
		}
		rel, err := filepath.Rel(root, p)
		if err != nil {
			return err
		}
		key := filepath.ToSlash(rel)
		if !strings.HasPrefix(key, prefix) {
			return nil
		}
		f, err := os.Open(p)
		if err != nil {
			return nil // vanished while listing
		}
		defer f.Close()
		fi, err := f.Stat()
		if err != nil || !fi.Mode().IsRegular() {
			return nil
		}
		etag, err := s.etag(f, fi)
		if err != nil {
			return err
		}
		out = append(out, listed{key: key, size: fi.Size(), etag: etag, modified: fi.ModTime().UTC()})
		return nil
	})
	sort.Slice(out, func(i, j int) bool { return out[i].key < out[j].key })
	return out, err
}

// fileIdentity identifies a file's content for the ETag cache.
func fileIdentity(fi os.FileInfo) fileID {
	id := fileID{size: fi.Size(), mtime: fi.ModTime().UnixNano()}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		id.dev, id.ino = uint64(st.Dev), st.Ino
	}
	return id
}
