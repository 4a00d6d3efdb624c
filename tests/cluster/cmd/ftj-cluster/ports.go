package main

import (
	"fmt"
	"net"
	"strconv"
)

// runFreePorts prints N distinct TCP ports that were free on 127.0.0.1 a moment ago.
// All listeners stay open until every port is picked, so the N ports differ.
func runFreePorts(args []string) error {
	if len(args) != 1 {
		return fmt.Errorf("usage: free-ports N")
	}
	n, err := strconv.Atoi(args[0])
	if err != nil || n < 1 || n > 64 {
		return fmt.Errorf("N must be a number from 1 to 64, got %q", args[0])
	}
	var listeners []net.Listener
	defer func() {
		for _, l := range listeners {
			_ = l.Close()
		}
	}()
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return err
		}
		listeners = append(listeners, l)
		fmt.Println(l.Addr().(*net.TCPAddr).Port)
	}
	return nil
}
