package s3

import (
	"crypto/md5"
	"encoding/hex"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/fieldota/fieldota/ota/durable"
)

// Faults is what the artifact server does wrong on purpose. The zero value is a well-behaved S3.
// Byte counts are body bytes of one response unless the field says otherwise.
type Faults struct {
	Status      int           // answer this status (500, 503, 404, …) with an S3 XML error instead of the object…
	StatusTimes int           // …for this many requests, then behave (0 = every request). Ignored in OnRequest faults.
	RetryAfter  time.Duration // with Status: send Retry-After (whole seconds)

	CutAfterBytes int64   // drop the connection after this many body bytes (0 = never)
	CutAtOffsets  []int64 // drop the connection once when a response reaches each of these object offsets

	Stall           time.Duration // send nothing for this long…
	StallAfterBytes int64         // …after this many body bytes

	RateBytesPerSec int64 // throttle the body

	ReplaceAfterBytes int64  // after this many body bytes, replace the object with ReplaceWith (new ETag), once;
	ReplaceWith       []byte // the response in flight goes on with the old bytes, as S3 does

	IgnoreRange   bool // answer 200 with the whole object to a Range request
	IgnoreIfRange bool // serve the Range even when If-Range names another ETag (a broken cache or proxy)
}

// Stats counts what the server did, for tests and benchmarks.
type Stats struct {
	Requests  int
	BytesSent int64 // body bytes written to the network
}

// Request records one request the server answered.
type Request struct {
	N       int    // 1-based request number, server-wide
	Method  string // GET or HEAD
	Object  string // "bucket/key" ("" when the URL was refused)
	Range   string // the Range header as received
	IfRange string
	Status  int
	Bytes   int64 // body bytes sent
	Cut     bool  // the connection was dropped on purpose
}

// Server is S3 for the emulator, path-style only: CreateBucket, HeadBucket, Put/GetBucketVersioning,
// PutObject (single part, aws-chunked bodies included), GetObject and HeadObject (by versionId
// too) with strong ETag, single Range and If-Range, ListObjectsV2, S3-shaped XML errors, SigV4
// authentication (headers or presigned query strings), and fault injection on GET. It is an http.Handler; TLS is the listener's business
// (httptest.NewTLSServer, http.Server.ServeTLS).
type Server struct {
	dir string
	p   *Presigner

	mu        sync.Mutex
	n         int
	arts      map[string]*artifact
	onRequest func(n int, r *http.Request) Faults
	total     Stats
	log       []Request
	etags     map[fileID]string
	inFlight  int
	buckets   map[string]*bucket
}

type artifact struct {
	faults     Faults
	statusLeft int
	cutsLeft   []int64
	replaced   bool
	stats      Stats
}

type fileID struct {
	dev, ino    uint64
	size, mtime int64
}

const maxLog = 10000 // the emulator may run for days; keep the request log bounded

// NewServer serves the buckets under dir (dir/<bucket>/<key>); p mints and checks its own presigned URLs.
func NewServer(dir string, p *Presigner) *Server {
	return &Server{dir: dir, p: p, arts: map[string]*artifact{}, etags: map[fileID]string{}, buckets: map[string]*bucket{}}
}

// SetFaults sets the faults of one object ("bucket/key"), replacing earlier ones and their counters.
func (s *Server) SetFaults(objectPath string, f Faults) {
	s.mu.Lock()
	defer s.mu.Unlock()
	a := s.art(objectPath)
	a.faults = f
	a.statusLeft = f.StatusTimes
	a.cutsLeft = append([]int64(nil), f.CutAtOffsets...)
	a.replaced = false
}

// ClearFaults makes every object behave again.
func (s *Server) ClearFaults() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, a := range s.arts {
		a.faults, a.cutsLeft = Faults{}, nil
	}
	s.onRequest = nil
}

// OnRequest installs a per-request fault chooser, called with the server-wide request number
// (1-based) and the request. Its non-zero fields override the object's faults for that request.
func (s *Server) OnRequest(fn func(n int, r *http.Request) Faults) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.onRequest = fn
}

// Stats returns the counters of one object, or the server's totals for "".
func (s *Server) Stats(objectPath string) Stats {
	s.mu.Lock()
	defer s.mu.Unlock()
	if objectPath == "" {
		return s.total
	}
	return s.art(objectPath).stats
}

// InFlight is the number of requests being answered. A client can have read a whole body before
// its handler returns and is counted, so tests wait for 0 before reading Stats or Requests.
func (s *Server) InFlight() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.inFlight
}

// Requests returns the recent requests in order (bounded).
func (s *Server) Requests() []Request {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Request(nil), s.log...)
}

// ResetStats zeroes every counter and the request log.
func (s *Server) ResetStats() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.total, s.log = Stats{}, nil
	for _, a := range s.arts {
		a.stats = Stats{}
	}
}

func (s *Server) art(objectPath string) *artifact {
	objectPath = strings.TrimPrefix(objectPath, "/")
	a := s.arts[objectPath]
	if a == nil {
		a = &artifact{}
		s.arts[objectPath] = a
	}
	return a
}

func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	s.n++
	s.inFlight++
	rec := Request{N: s.n, Method: r.Method, Range: r.Header.Get("Range"), IfRange: r.Header.Get("If-Range")}
	onReq := s.onRequest
	s.mu.Unlock()

	fw := &faultWriter{ResponseWriter: w, r: r}
	defer func() {
		rec.Status, rec.Bytes, rec.Cut = fw.status, fw.sent, fw.cut
		if rec.Status == 0 {
			rec.Status = http.StatusOK
		}
		s.record(rec)
	}()
	w.Header().Set("X-Amz-Request-Id", fmt.Sprintf("FIELDOTA%08d", rec.N))

	bucketName, key, _ := strings.Cut(strings.TrimPrefix(r.URL.Path, "/"), "/")
	if bucketName == "" || strings.HasPrefix(bucketName, ".") {
		s3Error(fw, http.StatusBadRequest, "InvalidBucketName", "The specified bucket is not valid.", rec.N)
		return
	}
	own, err := s.authenticate(r)
	if err != nil {
		code, status := "AccessDenied", http.StatusForbidden
		switch {
		case errors.Is(err, errSkewed):
			code = "RequestTimeTooSkewed"
		case errors.Is(err, ErrURLSignature) && own:
			code = "SignatureDoesNotMatch"
		}
		msg := err.Error()
		if errors.Is(err, ErrURLExpired) {
			msg = "Request has expired"
		}
		s3Error(fw, status, code, msg, rec.N)
		return
	}
	q := r.URL.Query()
	switch {
	case key == "" && r.Method == http.MethodPut && q.Has("versioning"):
		s.putBucketVersioning(fw, r, bucketName, rec.N)
	case key == "" && r.Method == http.MethodGet && q.Has("versioning"):
		s.getBucketVersioning(fw, bucketName, rec.N)
	case key == "" && r.Method == http.MethodPut:
		s.createBucketHandler(fw, bucketName, rec.N)
	case key == "" && r.Method == http.MethodHead:
		if _, ok := s.versioning(bucketName); !ok {
			s3Error(fw, http.StatusNotFound, "NoSuchBucket", "The specified bucket does not exist.", rec.N)
			return
		}
		fw.WriteHeader(http.StatusOK)
	case key == "" && r.Method == http.MethodGet && q.Get("list-type") == "2":
		s.listObjectsV2(fw, r, bucketName, rec.N)
	case key == "":
		s3Error(fw, http.StatusNotImplemented, "NotImplemented", "The emulator does not implement this bucket operation.", rec.N)
	case r.Method == http.MethodPut:
		s.putObjectHandler(fw, r, bucketName, key, rec.N)
	case r.Method == http.MethodGet || r.Method == http.MethodHead:
		rec.Object = bucketName + "/" + key
		s.getObject(fw, r, rec.Object, rec.N, onReq)
	default:
		w.Header().Set("Allow", "GET, HEAD, PUT")
		s3Error(fw, http.StatusMethodNotAllowed, "MethodNotAllowed", "The specified method is not allowed against this resource.", rec.N)
	}
}

// authenticate checks SigV4: a presigned query string (the emulator's own are verified exactly:
// own reports that) or an Authorization header, each for shape and expiry. Anonymous requests
// are refused, as on a private bucket.
func (s *Server) authenticate(r *http.Request) (own bool, err error) {
	q := r.URL.Query()
	if q.Has(ParamAlgorithm) || q.Has(ParamSignature) {
		qa, err := parseQueryAuth(q)
		if err != nil {
			return false, fmt.Errorf("%w: %v", ErrURLSignature, err)
		}
		if qa.cred.keyID == s.p.keyID() {
			u := *r.URL
			u.Host = r.Host
			method := r.Method
			if method == http.MethodHead {
				method = http.MethodGet // a presigned GET also answers HEAD here (see docs/emulator.md)
			}
			_, err := s.p.check(method, &u)
			return true, err
		}
		if !s.p.now().Before(qa.date.Add(qa.expires)) {
			return false, ErrURLExpired
		}
		return false, nil
	}
	if r.Header.Get("Authorization") != "" {
		_, err := parseHeaderAuth(r.Header, s.p.now())
		return false, err
	}
	return false, errors.New("Access Denied")
}

// getObject is GetObject/HeadObject, by versionId when the query names one.
func (s *Server) getObject(fw *faultWriter, r *http.Request, obj string, n int, onReq func(int, *http.Request) Faults) {
	w := fw.ResponseWriter
	f := s.faultsFor(obj, n, r, onReq)
	fw.srv, fw.obj, fw.f = s, obj, f
	if f.Status != 0 {
		if f.RetryAfter > 0 {
			w.Header().Set("Retry-After", strconv.Itoa(int((f.RetryAfter+time.Second-1)/time.Second)))
		}
		code, msg := errorCode(f.Status)
		s3Error(fw, f.Status, code, msg, n)
		return
	}
	versionID := r.URL.Query().Get("versionId")
	path, v, err := s.resolve(obj, versionID)
	switch {
	case errors.Is(err, errNoSuchBucket):
		s3Error(fw, http.StatusNotFound, "NoSuchBucket", "The specified bucket does not exist.", n)
		return
	case errors.Is(err, errNoSuchVersion):
		s3Error(fw, http.StatusNotFound, "NoSuchVersion", "The specified version does not exist.", n)
		return
	case err != nil:
		s3Error(fw, http.StatusNotFound, "NoSuchKey", "The specified key does not exist.", n)
		return
	}
	file, err := os.Open(path)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			s3Error(fw, http.StatusNotFound, "NoSuchKey", "The specified key does not exist.", n)
			return
		}
		s3Error(fw, http.StatusInternalServerError, "InternalError", "We encountered an internal error. Please try again.", n)
		return
	}
	defer file.Close()
	fi, err := file.Stat()
	if err != nil || !fi.Mode().IsRegular() {
		s3Error(fw, http.StatusNotFound, "NoSuchKey", "The specified key does not exist.", n)
		return
	}
	etag, err := s.etag(file, fi)
	if err != nil {
		s3Error(fw, http.StatusInternalServerError, "InternalError", "We encountered an internal error. Please try again.", n)
		return
	}
	// S3 serves a single range; a multi-range request gets the whole object, as S3 does.
	if f.IgnoreRange || strings.Contains(r.Header.Get("Range"), ",") {
		r.Header.Del("Range")
	}
	if f.IgnoreIfRange {
		r.Header.Del("If-Range")
	}
	ctype := "binary/octet-stream" // S3's default; also stops ServeContent sniffing
	if v != nil {
		w.Header().Set("X-Amz-Version-Id", v.id)
		for k, val := range v.meta {
			w.Header().Set("X-Amz-Meta-"+k, val)
		}
		if v.ctype != "" {
			ctype = v.ctype
		}
	}
	w.Header().Set("ETag", etag)
	w.Header().Set("Content-Type", ctype)
	http.ServeContent(fw, r, "", fi.ModTime(), file)
}

func (s *Server) record(rec Request) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.inFlight--
	s.total.Requests++
	s.total.BytesSent += rec.Bytes
	if rec.Object != "" {
		a := s.art(rec.Object)
		a.stats.Requests++
		a.stats.BytesSent += rec.Bytes
	}
	s.log = append(s.log, rec)
	if len(s.log) > maxLog {
		s.log = append([]Request(nil), s.log[len(s.log)-maxLog/2:]...)
	}
}

// faultsFor merges the object's faults with the per-request ones and consumes one-shot counters.
func (s *Server) faultsFor(obj string, n int, r *http.Request, onReq func(int, *http.Request) Faults) Faults {
	var req Faults
	if onReq != nil {
		req = onReq(n, r)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	a := s.art(obj)
	f := a.faults
	f.CutAtOffsets = nil // handled through a.cutsLeft, which the writer consumes
	if f.Status != 0 && f.StatusTimes > 0 {
		if a.statusLeft > 0 {
			a.statusLeft--
		} else {
			f.Status = 0
		}
	}
	if a.replaced {
		f.ReplaceAfterBytes, f.ReplaceWith = 0, nil
	}
	if req.Status != 0 {
		f.Status, f.RetryAfter = req.Status, req.RetryAfter
	}
	if req.CutAfterBytes != 0 {
		f.CutAfterBytes = req.CutAfterBytes
	}
	f.CutAtOffsets = req.CutAtOffsets
	if req.Stall != 0 {
		f.Stall, f.StallAfterBytes = req.Stall, req.StallAfterBytes
	}
	if req.RateBytesPerSec != 0 {
		f.RateBytesPerSec = req.RateBytesPerSec
	}
	if req.ReplaceWith != nil {
		f.ReplaceAfterBytes, f.ReplaceWith = req.ReplaceAfterBytes, req.ReplaceWith
	}
	f.IgnoreRange = f.IgnoreRange || req.IgnoreRange
	f.IgnoreIfRange = f.IgnoreIfRange || req.IgnoreIfRange
	return f
}

// nextCut returns the body byte count after which to cut for a response starting at object offset
// start, consuming that offset from the object's one-shot list, or -1.
func (s *Server) nextCut(obj string, start, sent int64) int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	a := s.art(obj)
	best := int64(-1)
	for _, off := range a.cutsLeft {
		if rel := off - start; rel >= sent && (best < 0 || rel < best) {
			best = rel
		}
	}
	return best
}

func (s *Server) consumeCut(obj string, abs int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	a := s.art(obj)
	for i, off := range a.cutsLeft {
		if off == abs {
			a.cutsLeft = append(a.cutsLeft[:i], a.cutsLeft[i+1:]...)
			return
		}
	}
}

// replace swaps the object's content once; the open file of the response in flight keeps the old bytes.
func (s *Server) replace(obj string, content []byte) error {
	s.mu.Lock()
	a := s.art(obj)
	if a.replaced {
		s.mu.Unlock()
		return nil
	}
	a.replaced = true
	s.mu.Unlock()
	path, ok := s.objectFile(obj)
	if !ok {
		return fmt.Errorf("replace %s: bad object path", obj)
	}
	return durable.WriteFile(path, content, 0o644)
}

// objectFile maps "bucket/key" to a file under dir, refusing anything that escapes it.
func (s *Server) objectFile(obj string) (string, bool) {
	if obj == "" || strings.Contains(obj, "\x00") {
		return "", false
	}
	for _, part := range strings.Split(obj, "/") {
		if part == ".." {
			return "", false
		}
	}
	return filepath.Join(s.dir, filepath.FromSlash(obj)), true
}

// etag is S3's ETag for a single-part upload: the quoted hex MD5 of the content, cached per file
// identity so that a 1 GiB object is hashed once, and a replaced object gets a new one.
func (s *Server) etag(f *os.File, fi os.FileInfo) (string, error) {
	id := fileIdentity(fi)
	s.mu.Lock()
	e, ok := s.etags[id]
	s.mu.Unlock()
	if ok {
		return e, nil
	}
	h := md5.New()
	if _, err := io.Copy(h, io.NewSectionReader(f, 0, fi.Size())); err != nil {
		return "", err
	}
	e = `"` + hex.EncodeToString(h.Sum(nil)) + `"`
	s.mu.Lock()
	s.etags[id] = e
	s.mu.Unlock()
	return e, nil
}

func errorCode(status int) (code, msg string) {
	switch status {
	case http.StatusNotFound:
		return "NoSuchKey", "The specified key does not exist."
	case http.StatusForbidden:
		return "AccessDenied", "Access Denied"
	case http.StatusBadRequest:
		return "InvalidRequest", "Invalid Request"
	case http.StatusServiceUnavailable:
		return "SlowDown", "Please reduce your request rate."
	case http.StatusTooManyRequests:
		return "SlowDown", "Please reduce your request rate."
	case http.StatusInternalServerError:
		return "InternalError", "We encountered an internal error. Please try again."
	}
	return "InternalError", http.StatusText(status)
}

type s3ErrorBody struct {
	XMLName   xml.Name `xml:"Error"`
	Code      string   `xml:"Code"`
	Message   string   `xml:"Message"`
	RequestID string   `xml:"RequestId"`
	HostID    string   `xml:"HostId"`
}

// s3Error writes S3's error document (no body for HEAD, as S3 does).
func s3Error(w *faultWriter, status int, code, msg string, n int) {
	w.Header().Set("Content-Type", "application/xml")
	w.Header().Del("ETag")
	w.WriteHeader(status)
	if w.r.Method == http.MethodHead {
		return
	}
	body, _ := xml.Marshal(s3ErrorBody{Code: code, Message: msg, RequestID: fmt.Sprintf("FIELDOTA%08d", n), HostID: "fieldota-jobsim"})
	_, _ = io.WriteString(w, xml.Header)
	_, _ = w.Write(body)
}

// faultWriter counts body bytes and injects byte-level faults. Without faults it hands the body
// to the ResponseWriter's ReadFrom, so the kernel's sendfile path stays in use.
type faultWriter struct {
	http.ResponseWriter
	r      *http.Request
	srv    *Server
	obj    string
	f      Faults
	status int
	sent   int64
	cut    bool

	started bool
	start   int64 // object offset of the first body byte
	t0      time.Time
	stalled bool
	buf     []byte
}

func (w *faultWriter) WriteHeader(code int) {
	if w.status == 0 {
		w.status = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *faultWriter) Flush() {
	if fl, ok := w.ResponseWriter.(http.Flusher); ok {
		fl.Flush()
	}
}

func (w *faultWriter) active() bool {
	f := w.f
	return w.srv != nil && (f.CutAfterBytes > 0 || f.Stall > 0 || f.RateBytesPerSec > 0 ||
		(f.ReplaceWith != nil) || w.hasCutOffsets())
}

func (w *faultWriter) hasCutOffsets() bool {
	if len(w.f.CutAtOffsets) > 0 {
		return true
	}
	w.srv.mu.Lock()
	defer w.srv.mu.Unlock()
	return len(w.srv.art(w.obj).cutsLeft) > 0
}

func (w *faultWriter) ReadFrom(src io.Reader) (int64, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	if !w.active() {
		if rf, ok := w.ResponseWriter.(io.ReaderFrom); ok {
			n, err := rf.ReadFrom(src)
			w.sent += n
			return n, err
		}
	}
	if w.buf == nil {
		w.buf = make([]byte, 32<<10)
	}
	return io.CopyBuffer(writerOnly{w}, src, w.buf)
}

type writerOnly struct{ io.Writer }

func (w *faultWriter) Write(p []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	if w.srv == nil || !w.active() {
		n, err := w.ResponseWriter.Write(p)
		w.sent += int64(n)
		return n, err
	}
	if !w.started {
		w.started = true
		w.t0 = time.Now()
		w.start = contentRangeStart(w.Header().Get("Content-Range"))
	}
	written := 0
	for len(p) > 0 {
		chunk := int64(len(p))
		limit := func(at int64) {
			if at > w.sent && at-w.sent < chunk {
				chunk = at - w.sent
			}
		}
		f := w.f
		cutAt := w.cutPoint()
		if cutAt >= 0 {
			limit(cutAt)
		}
		if f.Stall > 0 && !w.stalled {
			limit(f.StallAfterBytes)
		}
		if f.ReplaceWith != nil {
			limit(f.ReplaceAfterBytes)
		}
		if f.RateBytesPerSec > 0 {
			chunk = min(chunk, max(1, f.RateBytesPerSec/20))
		}
		if cutAt >= 0 && w.sent >= cutAt {
			w.doCut(cutAt)
		}
		if f.Stall > 0 && !w.stalled && w.sent >= f.StallAfterBytes {
			w.stalled = true
			w.Flush()
			if err := w.wait(f.Stall); err != nil {
				return written, err
			}
		}
		n, err := w.ResponseWriter.Write(p[:chunk])
		w.sent += int64(n)
		written += n
		p = p[n:]
		if err != nil {
			return written, err
		}
		if f.ReplaceWith != nil && w.sent >= f.ReplaceAfterBytes {
			if err := w.srv.replace(w.obj, f.ReplaceWith); err != nil {
				return written, err
			}
			w.f.ReplaceWith = nil
		}
		if cutAt >= 0 && w.sent >= cutAt {
			w.doCut(cutAt)
		}
		if f.RateBytesPerSec > 0 {
			due := w.t0.Add(time.Duration(float64(w.sent) / float64(f.RateBytesPerSec) * float64(time.Second)))
			if err := w.wait(time.Until(due)); err != nil {
				return written, err
			}
		}
	}
	return written, nil
}

// cutPoint is the body byte count at which this response is cut, or -1.
func (w *faultWriter) cutPoint() int64 {
	cut := int64(-1)
	if w.f.CutAfterBytes > 0 {
		cut = w.f.CutAfterBytes
	}
	for _, off := range w.f.CutAtOffsets {
		if rel := off - w.start; rel >= w.sent && (cut < 0 || rel < cut) {
			cut = rel
		}
	}
	if rel := w.srv.nextCut(w.obj, w.start, w.sent); rel >= 0 && (cut < 0 || rel < cut) {
		cut = rel
	}
	return cut
}

// doCut flushes what was sent and drops the connection: the client sees a short body.
func (w *faultWriter) doCut(cutAt int64) {
	w.srv.consumeCut(w.obj, w.start+cutAt)
	w.cut = true
	w.Flush()
	panic(http.ErrAbortHandler)
}

func (w *faultWriter) wait(d time.Duration) error {
	if d <= 0 {
		return nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-w.r.Context().Done():
		return w.r.Context().Err()
	}
}

// contentRangeStart reads the first offset of "bytes a-b/n"; 0 for a whole-object response.
func contentRangeStart(cr string) int64 {
	rest, ok := strings.CutPrefix(cr, "bytes ")
	if !ok {
		return 0
	}
	a, _, ok := strings.Cut(rest, "-")
	if !ok {
		return 0
	}
	n, err := strconv.ParseInt(a, 10, 64)
	if err != nil {
		return 0
	}
	return n
}
