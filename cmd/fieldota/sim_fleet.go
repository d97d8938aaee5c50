package main

// sim_fleet.go: `fieldota sim fleet` runs N real agents in this process against a running
// `fieldota sim`, registered as things of one thing group, to try fleet rollouts locally.

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/iot"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	s3types "github.com/aws/aws-sdk-go-v2/service/s3/types"
	"github.com/spf13/cobra"

	"github.com/fieldota/fieldota/test/fleet"
)

func newSimFleetCmd() *cobra.Command {
	var (
		devices, failEvery int
		broker, api, pub   string
		s3URL, bucket      string
		group, dir, prefix string
	)
	cmd := &cobra.Command{
		Use:   "fleet --devices N --key RELEASE.pub [flags]",
		Short: "Run N real agents against a running emulator, as things of one thing group",
		Long: `fleet registers N things (dev-0001…) in a thing group of a running 'fieldota sim' (--api),
then runs N real agents in this process, each with its own state directory, configuration and MQTT
connection (--broker), and creates the versioned bucket --bucket in its S3. Each device manages a binary of its own (release with --target binary); with
--fail-every K every K-th device has a health check that never passes, so it rolls back and
reports FAILED HEALTH_CHECK_FAILED. Then release to the group and watch it, for example:

  fieldota release --key release.key --file app --target binary --binary app --version 2.0.0 \
    --bucket fleet --job-id fw-2 --thing-group fleet --exponential 50:2:succeeded=50 \
    --abort FAILED:20:10 --endpoint-url http://127.0.0.1:8080 --s3-endpoint-url http://127.0.0.1:8081
  fieldota rollout status fw-2 --watch --endpoint-url http://127.0.0.1:8080

It runs until SIGINT or SIGTERM.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if devices < 1 || pub == "" {
				return usageErr(errors.New("--devices N (≥ 1) and --key RELEASE.pub are required"))
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			if dir == "" {
				d, err := os.MkdirTemp("", "fieldota-fleet-")
				if err != nil {
					return ioErr(err)
				}
				defer os.RemoveAll(d)
				dir = d
			}
			o := fleet.Options{Devices: devices, Prefix: prefix, Dir: dir, MQTT: broker, ReleaseKey: pub}
			if u, err := url.Parse(s3URL); err == nil {
				o.S3Host = u.Host
			}
			if failEvery > 0 {
				o.Fail = func(i int) bool { return (i+1)%failEvery == 0 }
			}
			if err := registerFleet(ctx, api, group, o); err != nil {
				return err
			}
			if bucket != "" {
				if err := versionedBucket(ctx, s3URL, bucket); err != nil {
					return err
				}
			}
			t0 := time.Now()
			f, err := fleet.Start(ctx, o)
			if err != nil {
				return ioErr(err)
			}
			out := cmd.OutOrStdout()
			failing := 0
			for _, d := range f.Devices {
				if d.Failing {
					failing++
				}
			}
			fmt.Fprintf(out, "fieldota sim fleet: %d agents connected in %v (%d seeded to fail), things %s…%s in group %s, state under %s\n",
				devices, time.Since(t0).Round(time.Millisecond), failing, o.Name(0), o.Name(devices-1), group, dir)
			<-ctx.Done()
			fmt.Fprintln(out, "fieldota sim fleet: stopping")
			if err := f.Stop(); err != nil {
				fmt.Fprintln(cmd.ErrOrStderr(), "fieldota sim fleet:", err)
			}
			return nil
		},
	}
	fs := cmd.Flags()
	fs.IntVar(&devices, "devices", 0, "number of agents")
	fs.IntVar(&failEvery, "fail-every", 0, "every K-th device fails its health check (0 = none)")
	fs.StringVar(&broker, "broker", "tcp://127.0.0.1:1883", "the emulator's MQTT listener")
	apiFlag(fs, &api)
	fs.StringVar(&pub, "key", "", "release public key (PEM) the devices trust")
	fs.StringVar(&group, "thing-group", "fleet", "thing group the devices join")
	fs.StringVar(&prefix, "prefix", "dev-", "thing name prefix")
	fs.StringVar(&s3URL, "s3", "http://127.0.0.1:8081", "the emulator's S3, for --bucket")
	fs.StringVar(&bucket, "bucket", "fleet", "create this versioned bucket for releases ('' = none)")
	fs.StringVar(&dir, "dir", "", "directory for the devices' state (default: a temporary one, removed at exit)")
	return cmd
}

// versionedBucket creates the release bucket with versioning enabled (an existing one is kept).
func versionedBucket(ctx context.Context, endpoint, name string) error {
	sc := s3.New(s3.Options{Region: "us-east-1", BaseEndpoint: aws.String(endpoint), UsePathStyle: true,
		Credentials: credentials.NewStaticCredentialsProvider("AKIAFIELDOTAFLEET000", "fleet", "")})
	if _, err := sc.CreateBucket(ctx, &s3.CreateBucketInput{Bucket: aws.String(name)}); err != nil {
		var owned *s3types.BucketAlreadyOwnedByYou
		if !errors.As(err, &owned) {
			return awsErr("CreateBucket "+name, err)
		}
	}
	_, err := sc.PutBucketVersioning(ctx, &s3.PutBucketVersioningInput{Bucket: aws.String(name),
		VersioningConfiguration: &s3types.VersioningConfiguration{Status: s3types.BucketVersioningStatusEnabled}})
	if err != nil {
		return awsErr("PutBucketVersioning "+name, err)
	}
	return nil
}

// registerFleet creates the things and the group through the IoT API, as an operator would.
func registerFleet(ctx context.Context, api, group string, o fleet.Options) error {
	ic := iot.New(iot.Options{Region: "us-east-1", BaseEndpoint: aws.String(api),
		Credentials: credentials.NewStaticCredentialsProvider("AKIAFIELDOTAFLEET000", "fleet", "")})
	if _, err := ic.CreateThingGroup(ctx, &iot.CreateThingGroupInput{ThingGroupName: aws.String(group)}); err != nil {
		return awsErr("CreateThingGroup", err)
	}
	for i := range o.Devices {
		name := o.Name(i)
		if _, err := ic.CreateThing(ctx, &iot.CreateThingInput{ThingName: aws.String(name)}); err != nil {
			return awsErr("CreateThing "+name, err)
		}
		if _, err := ic.AddThingToThingGroup(ctx, &iot.AddThingToThingGroupInput{ThingGroupName: aws.String(group), ThingName: aws.String(name)}); err != nil {
			return awsErr("AddThingToThingGroup "+name, err)
		}
	}
	return nil
}
