package s3

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	awss3 "github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/s3/types"
	"github.com/aws/smithy-go"
)

// sdkFixture is the server driven by the real AWS SDK for Go v2 S3 client, with made-up keys.
type sdkFixture struct {
	srv *Server
	hs  *httptest.Server
	cl  *awss3.Client
	now time.Time
}

func newSDKFixture(t *testing.T) *sdkFixture {
	t.Helper()
	fx := &sdkFixture{now: time.Now()}
	p := &Presigner{Secret: []byte("emulator-secret"), Now: func() time.Time { return fx.now }}
	fx.srv = NewServer(t.TempDir(), p)
	fx.hs = httptest.NewServer(fx.srv)
	t.Cleanup(fx.hs.Close)
	p.Base = fx.hs.URL
	fx.cl = awss3.New(awss3.Options{
		Region:       "eu-west-1",
		BaseEndpoint: aws.String(fx.hs.URL),
		UsePathStyle: true,
		Credentials:  credentials.NewStaticCredentialsProvider("AKIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", ""),
	})
	return fx
}

func (fx *sdkFixture) bucket(t *testing.T, name string, versioned bool) {
	t.Helper()
	ctx := context.Background()
	if _, err := fx.cl.CreateBucket(ctx, &awss3.CreateBucketInput{Bucket: aws.String(name)}); err != nil {
		t.Fatal(err)
	}
	if versioned {
		if _, err := fx.cl.PutBucketVersioning(ctx, &awss3.PutBucketVersioningInput{Bucket: aws.String(name),
			VersioningConfiguration: &types.VersioningConfiguration{Status: types.BucketVersioningStatusEnabled}}); err != nil {
			t.Fatal(err)
		}
	}
}

func get(t *testing.T, cl *awss3.Client, bucket, key, version string) ([]byte, *awss3.GetObjectOutput) {
	t.Helper()
	in := &awss3.GetObjectInput{Bucket: aws.String(bucket), Key: aws.String(key)}
	if version != "" {
		in.VersionId = aws.String(version)
	}
	out, err := cl.GetObject(context.Background(), in)
	if err != nil {
		t.Fatalf("GetObject %s/%s@%s: %v", bucket, key, version, err)
	}
	defer out.Body.Close()
	b, err := io.ReadAll(out.Body)
	if err != nil {
		t.Fatal(err)
	}
	return b, out
}

// TestOverwrittenKeyKeepsEveryVersion: in a versioned bucket a second PutObject of the same key
// makes a new current version, and the first stays readable by its versionId (what a release's
// version pin relies on).
func TestOverwrittenKeyKeepsEveryVersion(t *testing.T) {
	fx := newSDKFixture(t)
	fx.bucket(t, "releases", true)
	ctx := context.Background()
	v, err := fx.cl.GetBucketVersioning(ctx, &awss3.GetBucketVersioningInput{Bucket: aws.String("releases")})
	if err != nil || v.Status != types.BucketVersioningStatusEnabled {
		t.Fatalf("versioning: %+v %v", v, err)
	}
	put := func(body string) string {
		out, err := fx.cl.PutObject(ctx, &awss3.PutObjectInput{Bucket: aws.String("releases"), Key: aws.String("app/fw.bin"),
			Body: strings.NewReader(body), Metadata: map[string]string{"sha256": "d1"}})
		if err != nil {
			t.Fatal(err)
		}
		if aws.ToString(out.VersionId) == "" || aws.ToString(out.ETag) == "" {
			t.Fatalf("PutObject answered no version or ETag: %+v", out)
		}
		return aws.ToString(out.VersionId)
	}
	v1 := put("first release")
	v2 := put("overwritten by someone else")
	if v1 == v2 {
		t.Fatal("two puts got the same version id")
	}
	if b, out := get(t, fx.cl, "releases", "app/fw.bin", v1); string(b) != "first release" || aws.ToString(out.VersionId) != v1 {
		t.Fatalf("version %s: %q", v1, b)
	}
	if b, out := get(t, fx.cl, "releases", "app/fw.bin", ""); string(b) != "overwritten by someone else" || aws.ToString(out.VersionId) != v2 || out.Metadata["sha256"] != "d1" {
		t.Fatalf("current: %q %+v", b, out.Metadata)
	}
	h, err := fx.cl.HeadObject(ctx, &awss3.HeadObjectInput{Bucket: aws.String("releases"), Key: aws.String("app/fw.bin"), VersionId: aws.String(v1)})
	if err != nil || aws.ToInt64(h.ContentLength) != int64(len("first release")) || aws.ToString(h.VersionId) != v1 {
		t.Fatalf("HeadObject by version: %+v %v", h, err)
	}
	_, err = fx.cl.HeadObject(ctx, &awss3.HeadObjectInput{Bucket: aws.String("releases"), Key: aws.String("app/fw.bin"), VersionId: aws.String("0123456789abcdef0123456789abcdef")})
	var re interface{ HTTPStatusCode() int }
	if !errors.As(err, &re) || re.HTTPStatusCode() != 404 {
		t.Fatalf("HeadObject of an unknown version: %v", err)
	}
	// The pinned version is served through the emulator's own presigned URL too.
	resp, err := http.Get(fx.srv.p.SignVersion("releases/app/fw.bin", v1, time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || string(b) != "first release" {
		t.Fatalf("presigned pinned GET: %d %q", resp.StatusCode, b)
	}
}

func TestListObjectsV2PagesInKeyOrder(t *testing.T) {
	fx := newSDKFixture(t)
	fx.bucket(t, "b-list", false)
	ctx := context.Background()
	for _, k := range []string{"c", "a/2", "a/1", "b"} {
		if _, err := fx.cl.PutObject(ctx, &awss3.PutObjectInput{Bucket: aws.String("b-list"), Key: aws.String(k), Body: strings.NewReader(k)}); err != nil {
			t.Fatal(err)
		}
	}
	var keys []string
	p := awss3.NewListObjectsV2Paginator(fx.cl, &awss3.ListObjectsV2Input{Bucket: aws.String("b-list"), MaxKeys: aws.Int32(3)})
	pages := 0
	for p.HasMorePages() {
		out, err := p.NextPage(ctx)
		if err != nil {
			t.Fatal(err)
		}
		pages++
		for _, o := range out.Contents {
			keys = append(keys, aws.ToString(o.Key))
		}
	}
	if strings.Join(keys, ",") != "a/1,a/2,b,c" || pages != 2 {
		t.Fatalf("keys %v in %d pages", keys, pages)
	}
	out, err := fx.cl.ListObjectsV2(ctx, &awss3.ListObjectsV2Input{Bucket: aws.String("b-list"), Prefix: aws.String("a/")})
	if err != nil || len(out.Contents) != 2 || aws.ToInt64(out.Contents[0].Size) != 3 {
		t.Fatalf("prefix: %+v %v", out, err)
	}
}

// TestSigV4ShapeAndExpiryAreChecked: SDK-presigned URLs work until their expiry and not after;
// a request with no signature, a malformed one or a skewed clock is refused.
func TestSigV4ShapeAndExpiryAreChecked(t *testing.T) {
	fx := newSDKFixture(t)
	fx.bucket(t, "b-auth", false)
	ctx := context.Background()
	if _, err := fx.cl.PutObject(ctx, &awss3.PutObjectInput{Bucket: aws.String("b-auth"), Key: aws.String("k"), Body: bytes.NewReader([]byte("payload"))}); err != nil {
		t.Fatal(err)
	}
	pre, err := awss3.NewPresignClient(fx.cl).PresignGetObject(ctx, &awss3.GetObjectInput{Bucket: aws.String("b-auth"), Key: aws.String("k")},
		awss3.WithPresignExpires(2*time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	status := func(u string, hdr http.Header) (int, string) {
		req, _ := http.NewRequest("GET", u, nil)
		for k, v := range hdr {
			req.Header[k] = v
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		return resp.StatusCode, string(b)
	}
	if c, b := status(pre.URL, nil); c != 200 || b != "payload" {
		t.Fatalf("SDK-presigned GET: %d %s", c, b)
	}
	plain := fx.hs.URL + "/b-auth/k"
	for name, c := range map[string]struct {
		url  string
		hdr  http.Header
		code string
	}{
		"anonymous":          {plain, nil, "AccessDenied"},
		"truncated sig":      {strings.Replace(pre.URL, "X-Amz-Signature=", "X-Amz-Signature=zz", 1), nil, "AccessDenied"},
		"header, bad scope":  {plain, http.Header{"Authorization": {"AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20261201/eu-west-1/iot/aws4_request, SignedHeaders=host, Signature=" + strings.Repeat("a", 64)}, "X-Amz-Date": {fx.now.UTC().Format(amzDateLayout)}, "X-Amz-Content-Sha256": {"UNSIGNED-PAYLOAD"}}, "AccessDenied"},
		"header, clock skew": {plain, http.Header{"Authorization": {"AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/" + fx.now.Add(-time.Hour).UTC().Format("20060102") + "/eu-west-1/s3/aws4_request, SignedHeaders=host, Signature=" + strings.Repeat("a", 64)}, "X-Amz-Date": {fx.now.Add(-time.Hour).UTC().Format(amzDateLayout)}, "X-Amz-Content-Sha256": {"UNSIGNED-PAYLOAD"}}, "RequestTimeTooSkewed"},
	} {
		if code, body := status(c.url, c.hdr); code != 403 || !strings.Contains(body, "<Code>"+c.code+"</Code>") {
			t.Errorf("%s: %d %s", name, code, body)
		}
	}
	fx.now = fx.now.Add(2 * time.Minute)
	if c, b := status(pre.URL, nil); c != 403 || !strings.Contains(b, "Request has expired") {
		t.Fatalf("SDK-presigned GET after its expiry: %d %s", c, b)
	}
	var ae smithy.APIError
	if _, err := fx.cl.PutObject(ctx, &awss3.PutObjectInput{Bucket: aws.String("nope"), Key: aws.String("k"), Body: strings.NewReader("x")}); !errors.As(err, &ae) {
		t.Fatalf("put to a missing bucket: %v", err)
	}
}
