// Prints Amazon MSK IAM tokens for fixed credentials and a fixed clock, built the way
// AWS's signer for Go (aws-msk-iam-sasl-signer-go) builds them, with the AWS SDK for
// Go's SigV4 signer: a GET of https://kafka.<region>.amazonaws.com/?Action=kafka-cluster:Connect
// presigned for 900 s (service kafka-cluster, payload hash of the empty string), a
// User-Agent query parameter added after signing, the query re-encoded in key order,
// and the URL in unpadded base64url. kafka-direct's known-answer tests
// (src/kafka/msk_iam.rs) compare their tokens with these.
//
// Usage: go run . (from this directory); one line per case: name, then the token. It
// first checks itself against the signer: a token the signer builds now, with static
// credentials, must equal the one built here for the same second and User-Agent.
package main

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"net/http"
	"net/url"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	v4 "github.com/aws/aws-sdk-go-v2/aws/signer/v4"
	"github.com/aws/aws-sdk-go-v2/credentials"
	signer "github.com/aws/aws-msk-iam-sasl-signer-go/signer"
)

func token(region string, creds aws.Credentials, at time.Time, userAgent string) string {
	query := url.Values{"Action": {"kafka-cluster:Connect"}, "X-Amz-Expires": {"900"}}
	u := url.URL{Scheme: "https", Host: fmt.Sprintf("kafka.%s.amazonaws.com", region), Path: "/", RawQuery: query.Encode()}
	req, err := http.NewRequest(http.MethodGet, u.String(), nil)
	if err != nil {
		panic(err)
	}
	empty := sha256.Sum256(nil)
	signed, _, err := v4.NewSigner().PresignHTTP(context.Background(), creds, req, hex.EncodeToString(empty[:]), "kafka-cluster", region, at)
	if err != nil {
		panic(err)
	}
	parsed, err := url.Parse(signed)
	if err != nil {
		panic(err)
	}
	q := parsed.Query()
	q.Set("User-Agent", userAgent)
	parsed.RawQuery = q.Encode()
	return base64.RawURLEncoding.EncodeToString([]byte(parsed.String()))
}

// Whether this program's tokens are the signer's: the signer signs at the current
// second, so both are built within one second, with the signer's User-Agent.
func sameAsSigner(creds aws.Credentials) {
	provider := credentials.StaticCredentialsProvider{Value: creds}
	for attempt := 0; attempt < 5; attempt++ {
		before := time.Now().UTC().Truncate(time.Second)
		real, _, err := signer.GenerateAuthTokenFromCredentialsProvider(context.Background(), "us-east-1", provider)
		if err != nil {
			panic(err)
		}
		if time.Now().UTC().Truncate(time.Second) != before {
			continue
		}
		decoded, err := base64.RawURLEncoding.DecodeString(real)
		if err != nil {
			panic(err)
		}
		parsed, err := url.Parse(string(decoded))
		if err != nil {
			panic(err)
		}
		ours := token("us-east-1", creds, before, parsed.Query().Get("User-Agent"))
		if ours != real {
			panic(fmt.Sprintf("not the signer's token:\n%s\n%s", ours, real))
		}
		return
	}
	panic("could not sign within one second")
}

func main() {
	at := time.Date(2026, 12, 4, 5, 6, 7, 0, time.UTC)
	long := aws.Credentials{AccessKeyID: "AKIAIOSFODNN7EXAMPLE", SecretAccessKey: "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"}
	session := aws.Credentials{AccessKeyID: "ASIAIOSFODNN7EXAMPLE", SecretAccessKey: "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", SessionToken: "IQoJb3JpZ2luX2VjEXAMPLE+token/with=signs"}
	sameAsSigner(long)
	sameAsSigner(session)
	fmt.Println("long-term", token("us-east-1", long, at, "kafka-direct/0.1.0"))
	fmt.Println("session", token("eu-west-1", session, at, "kafka-direct/0.1.0"))
}
