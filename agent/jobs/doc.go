// Package jobs is the device side of the AWS IoT Jobs MQTT API, on paho.mqtt.golang.
//
// A Client keeps one MQTT connection (TLS with a device certificate, keep-alive, reconnect with
// jittered backoff), resubscribes to its thing's Jobs topics on every connect (paho does not), and
// offers the four device requests — GetPendingJobExecutions, StartNextPendingJobExecution,
// DescribeJobExecution and UpdateJobExecution — as blocking calls. Each call correlates its reply by
// topic and clientToken, times out, and retries RequestThrottled, InternalError and timeouts with
// jittered exponential backoff and a fresh clientToken. Rejections come back as *RejectedError,
// matched with errors.Is against the Err* sentinels. The notify and notify-next events are delivered
// to callbacks on a goroutine of the client's own, never on paho's.
//
// docs/protocol.md settles the clientToken format, timeouts and retry policy that this package
// implements.
package jobs
