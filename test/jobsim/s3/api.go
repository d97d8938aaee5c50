package s3

import (
	"bufio"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"net/http"
	"regexp"
	"sort"
	"strconv"
	"strings"
)

// The bucket and PutObject operations of S3's REST API, path-style.

const xmlns = "http://s3.amazonaws.com/doc/2006-03-01/"

// S3's bucket naming rules (the general-purpose bucket subset that matters here).
var bucketNamePattern = regexp.MustCompile(`^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$`)

func writeXML(w *faultWriter, v any) {
	w.Header().Set("Content-Type", "application/xml")
	w.WriteHeader(http.StatusOK)
	_, _ = io.WriteString(w, xml.Header)
	_ = xml.NewEncoder(w).Encode(v)
}

func (s *Server) createBucketHandler(w *faultWriter, name string, n int) {
	if !bucketNamePattern.MatchString(name) {
		s3Error(w, http.StatusBadRequest, "InvalidBucketName", "The specified bucket is not valid.", n)
		return
	}
	existed, err := s.createBucket(name)
	if err != nil {
		s3Error(w, http.StatusInternalServerError, "InternalError", err.Error(), n)
		return
	}
	if existed {
		// Every bucket here belongs to the one emulated account.
		s3Error(w, http.StatusConflict, "BucketAlreadyOwnedByYou", "Your previous request to create the named bucket succeeded and you already own it.", n)
		return
	}
	w.Header().Set("Location", "/"+name)
	w.WriteHeader(http.StatusOK)
}

type versioningConfiguration struct {
	XMLName xml.Name `xml:"VersioningConfiguration"`
	Xmlns   string   `xml:"xmlns,attr,omitempty"`
	Status  string   `xml:"Status,omitempty"`
}

func (s *Server) putBucketVersioning(w *faultWriter, r *http.Request, name string, n int) {
	var c versioningConfiguration
	if err := xml.NewDecoder(io.LimitReader(r.Body, 1<<16)).Decode(&c); err != nil {
		s3Error(w, http.StatusBadRequest, "MalformedXML", "The XML you provided was not well-formed.", n)
		return
	}
	if c.Status != VersioningEnabled && c.Status != VersioningSuspended {
		s3Error(w, http.StatusBadRequest, "IllegalVersioningConfigurationException", "Status must be Enabled or Suspended.", n)
		return
	}
	if err := s.SetVersioning(name, c.Status); err != nil {
		s3Error(w, http.StatusNotFound, "NoSuchBucket", "The specified bucket does not exist.", n)
		return
	}
	w.WriteHeader(http.StatusOK)
}

func (s *Server) getBucketVersioning(w *faultWriter, name string, n int) {
	st, ok := s.versioning(name)
	if !ok {
		s3Error(w, http.StatusNotFound, "NoSuchBucket", "The specified bucket does not exist.", n)
		return
	}
	writeXML(w, versioningConfiguration{Xmlns: xmlns, Status: st})
}

type listResult struct {
	XMLName               xml.Name     `xml:"ListBucketResult"`
	Xmlns                 string       `xml:"xmlns,attr"`
	Name                  string       `xml:"Name"`
	Prefix                string       `xml:"Prefix"`
	KeyCount              int          `xml:"KeyCount"`
	MaxKeys               int          `xml:"MaxKeys"`
	IsTruncated           bool         `xml:"IsTruncated"`
	ContinuationToken     string       `xml:"ContinuationToken,omitempty"`
	NextContinuationToken string       `xml:"NextContinuationToken,omitempty"`
	StartAfter            string       `xml:"StartAfter,omitempty"`
	Contents              []listObject `xml:"Contents"`
}

type listObject struct {
	Key          string `xml:"Key"`
	LastModified string `xml:"LastModified"`
	ETag         string `xml:"ETag"`
	Size         int64  `xml:"Size"`
	StorageClass string `xml:"StorageClass"`
}

// listObjectsV2 lists keys in order; the continuation token is the last key returned (opaque to
// clients, as S3's is).
func (s *Server) listObjectsV2(w *faultWriter, r *http.Request, name string, n int) {
	if _, ok := s.versioning(name); !ok {
		s3Error(w, http.StatusNotFound, "NoSuchBucket", "The specified bucket does not exist.", n)
		return
	}
	q := r.URL.Query()
	maxKeys := 1000
	if v := q.Get("max-keys"); v != "" {
		m, err := strconv.Atoi(v)
		if err != nil || m < 0 {
			s3Error(w, http.StatusBadRequest, "InvalidArgument", "max-keys must be a non-negative integer.", n)
			return
		}
		maxKeys = min(m, 1000)
	}
	all, err := s.list(name, q.Get("prefix"))
	if err != nil {
		s3Error(w, http.StatusInternalServerError, "InternalError", err.Error(), n)
		return
	}
	after := q.Get("start-after")
	if t := q.Get("continuation-token"); t != "" {
		after = t
	}
	i := sort.Search(len(all), func(i int) bool { return all[i].key > after })
	res := listResult{Xmlns: xmlns, Name: name, Prefix: q.Get("prefix"), MaxKeys: maxKeys,
		ContinuationToken: q.Get("continuation-token"), StartAfter: q.Get("start-after")}
	for ; i < len(all) && len(res.Contents) < maxKeys; i++ {
		o := all[i]
		res.Contents = append(res.Contents, listObject{Key: o.key, LastModified: o.modified.Format("2006-01-02T15:04:05.000Z"),
			ETag: o.etag, Size: o.size, StorageClass: "STANDARD"})
	}
	res.KeyCount = len(res.Contents)
	if i < len(all) && len(res.Contents) > 0 {
		res.IsTruncated, res.NextContinuationToken = true, res.Contents[len(res.Contents)-1].Key
	}
	writeXML(w, res)
}

// maxPutSize is S3's single-PUT limit (5 GiB).
const maxPutSize = 5 << 30

func (s *Server) putObjectHandler(w *faultWriter, r *http.Request, bucketName, key string, n int) {
	if r.Header.Get("X-Amz-Copy-Source") != "" || r.URL.Query().Has("uploadId") || r.URL.Query().Has("partNumber") {
		s3Error(w, http.StatusNotImplemented, "NotImplemented", "CopyObject and multipart uploads are not emulated.", n)
		return
	}
	var body io.Reader = io.LimitReader(r.Body, maxPutSize+1)
	if isChunked(r) {
		body = newChunkedReader(body)
	}
	meta := map[string]string{}
	for k, v := range r.Header {
		if name, ok := strings.CutPrefix(strings.ToLower(k), "x-amz-meta-"); ok && len(v) > 0 {
			meta[name] = v[0]
		}
	}
	v, err := s.putObject(bucketName, key, body, meta, r.Header.Get("Content-Type"))
	switch {
	case errors.Is(err, errNoSuchBucket):
		s3Error(w, http.StatusNotFound, "NoSuchBucket", "The specified bucket does not exist.", n)
		return
	case errors.Is(err, errBadKey):
		s3Error(w, http.StatusBadRequest, "InvalidArgument", "The key is not valid.", n)
		return
	case errors.Is(err, errChunk):
		s3Error(w, http.StatusBadRequest, "IncompleteBody", err.Error(), n)
		return
	case err != nil:
		s3Error(w, http.StatusInternalServerError, "InternalError", err.Error(), n)
		return
	}
	if v.size > maxPutSize {
		s3Error(w, http.StatusBadRequest, "EntityTooLarge", "Your proposed upload exceeds the maximum allowed size.", n)
		return
	}
	if want := r.Header.Get("X-Amz-Decoded-Content-Length"); want != "" && want != strconv.FormatInt(v.size, 10) {
		s3Error(w, http.StatusBadRequest, "IncompleteBody", "The request body is shorter than x-amz-decoded-content-length.", n)
		return
	}
	if v.id != "null" {
		w.Header().Set("X-Amz-Version-Id", v.id)
	}
	w.Header().Set("ETag", v.etag)
	w.WriteHeader(http.StatusOK)
}

func isChunked(r *http.Request) bool {
	return strings.Contains(r.Header.Get("Content-Encoding"), "aws-chunked") ||
		strings.HasPrefix(r.Header.Get("X-Amz-Content-Sha256"), "STREAMING-")
}

var errChunk = errors.New("malformed aws-chunked body")

// chunkedReader decodes S3's aws-chunked encoding: "<hex size>[;chunk-signature=…]\r\n<data>\r\n",
// ending with a zero-size chunk and optional trailers (checksums), which are read and dropped.
type chunkedReader struct {
	br   *bufio.Reader
	left int64
	done bool
	err  error
}

func newChunkedReader(r io.Reader) *chunkedReader {
	return &chunkedReader{br: bufio.NewReader(r)}
}

func (c *chunkedReader) line() (string, error) {
	l, err := c.br.ReadString('\n')
	if err != nil {
		return "", fmt.Errorf("%w: %v", errChunk, err)
	}
	return strings.TrimRight(l, "\r\n"), nil
}

func (c *chunkedReader) Read(p []byte) (int, error) {
	for c.left == 0 {
		if c.err != nil {
			return 0, c.err
		}
		if c.done {
			return 0, io.EOF
		}
		head, err := c.line()
		if err != nil {
			c.err = err
			return 0, err
		}
		sizeHex, _, _ := strings.Cut(head, ";")
		size, err := strconv.ParseInt(strings.TrimSpace(sizeHex), 16, 64)
		if err != nil || size < 0 {
			c.err = fmt.Errorf("%w: chunk header %q", errChunk, head)
			return 0, c.err
		}
		if size == 0 {
			for { // trailers up to the empty line (or the end of the body)
				l, err := c.br.ReadString('\n')
				if strings.TrimRight(l, "\r\n") == "" || err != nil {
					break
				}
			}
			c.done = true
			return 0, io.EOF
		}
		c.left = size
	}
	if int64(len(p)) > c.left {
		p = p[:c.left]
	}
	n, err := c.br.Read(p)
	c.left -= int64(n)
	if c.left == 0 && err == nil {
		if crlf, e := c.line(); e != nil || crlf != "" {
			c.err = fmt.Errorf("%w: no CRLF after a chunk", errChunk)
		}
	}
	if err == io.EOF {
		err = fmt.Errorf("%w: body ended inside a chunk", errChunk)
		c.err = err
	}
	return n, err
}
