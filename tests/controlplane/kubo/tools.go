//go:build tools

// Pins kubo's ipfs command so that `go build github.com/ipfs/kubo/cmd/ipfs` resolves in this module.
package tools

import _ "github.com/ipfs/kubo/cmd/ipfs"
