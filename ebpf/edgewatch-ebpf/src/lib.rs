//! Empty library target: it lets the sidecar declare a build-dependency on this crate, so
//! cargo rebuilds the sidecar (and re-embeds the eBPF object) when anything here changes.
#![no_std]
