//! Attribution helpers on text the kernel gives about a process: the container it runs in
//! (from `/proc/PID/cgroup`) and Docker's userland proxy (from its command line). Pure.
use serde::{Deserialize, Serialize};

use super::Proto;

/// A container a process runs in.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
pub struct Container {
    /// `docker`, `containerd`, `crio`, `podman` or `kubernetes` (a pod with an unknown runtime).
    pub runtime: String,
    /// The full container id (64 hex characters).
    pub id: String,
}

impl Container {
    /// The 12-character id Docker prints.
    pub fn short_id(&self) -> &str {
        &self.id[..self.id.len().min(12)]
    }
}

/// What a `docker-proxy` process forwards: it listens on `host_ip:host_port` and forwards to
/// `container_ip:container_port`.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
pub struct DockerProxy {
    pub proto: Proto,
    pub host_ip: String,
    pub host_port: u16,
    pub container_ip: String,
    pub container_port: u16,
}

fn is_container_id(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Finds the container in the contents of `/proc/PID/cgroup` (v1 or v2 lines
/// `hierarchy:controllers:path`). Returns `None` for processes on the host.
pub fn container_from_cgroup(cgroup_file: &str) -> Option<Container> {
    cgroup_file
        .lines()
        .filter_map(|line| line.splitn(3, ':').nth(2))
        .find_map(container_from_cgroup_path)
}

/// Finds the container id in one cgroup path.
pub fn container_from_cgroup_path(path: &str) -> Option<Container> {
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let in_pod = segments.iter().any(|s| s.starts_with("kubepods"));
    for (i, seg) in segments.iter().enumerate().rev() {
        let name = seg.strip_suffix(".scope").unwrap_or(seg);
        let prefixed = [
            ("docker-", "docker"),
            ("cri-containerd-", "containerd"),
            ("crio-", "crio"),
            ("libpod-", "podman"),
        ];
        for (prefix, runtime) in prefixed {
            if let Some(id) = name.strip_prefix(prefix) {
                if is_container_id(id) {
                    return Some(Container {
                        runtime: runtime.to_owned(),
                        id: id.to_owned(),
                    });
                }
            }
        }
        if is_container_id(name) {
            let parent = i.checked_sub(1).map(|p| segments[p]).unwrap_or_default();
            let runtime = if parent == "docker" {
                "docker"
            } else if in_pod {
                "kubernetes"
            } else {
                continue;
            };
            return Some(Container {
                runtime: runtime.to_owned(),
                id: name.to_owned(),
            });
        }
    }
    None
}

/// Parses a `docker-proxy` command line (its arguments, program name included or not).
/// Returns `None` when it is not a complete docker-proxy invocation.
pub fn parse_docker_proxy<S: AsRef<str>>(args: &[S]) -> Option<DockerProxy> {
    let mut proto = None;
    let mut host_ip = None;
    let mut host_port = None;
    let mut container_ip = None;
    let mut container_port = None;
    let mut it = args.iter().map(AsRef::as_ref);
    while let Some(arg) = it.next() {
        let flag = arg.trim_start_matches('-');
        if flag.len() == arg.len() {
            continue;
        }
        let (name, inline) = match flag.split_once('=') {
            Some((n, v)) => (n, Some(v)),
            None => (flag, None),
        };
        let takes_value = matches!(
            name,
            "proto" | "host-ip" | "host-port" | "container-ip" | "container-port"
        );
        if !takes_value {
            continue;
        }
        let value = inline.or_else(|| it.next())?;
        match name {
            "proto" => {
                proto = match value {
                    "tcp" | "tcp4" | "tcp6" => Some(Proto::Tcp),
                    "udp" | "udp4" | "udp6" => Some(Proto::Udp),
                    _ => return None,
                }
            }
            "host-ip" => host_ip = Some(value.to_owned()),
            "host-port" => host_port = value.parse().ok(),
            "container-ip" => container_ip = Some(value.to_owned()),
            "container-port" => container_port = value.parse().ok(),
            _ => {}
        }
    }
    Some(DockerProxy {
        proto: proto.unwrap_or(Proto::Tcp),
        host_ip: host_ip?,
        host_port: host_port?,
        container_ip: container_ip?,
        container_port: container_port?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "4f1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a0b1c";

    #[test]
    fn docker_systemd_driver() {
        let c = container_from_cgroup(&format!("0::/system.slice/docker-{ID}.scope\n"))
            .expect("container");
        assert_eq!(c.runtime, "docker");
        assert_eq!(c.id, ID);
        assert_eq!(c.short_id(), "4f1c2d3e4f5a");
    }

    #[test]
    fn docker_cgroupfs_driver_and_v1_lines() {
        let file = format!("12:pids:/docker/{ID}\n11:memory:/docker/{ID}\n0::/docker/{ID}\n");
        let c = container_from_cgroup(&file).expect("container");
        assert_eq!((c.runtime.as_str(), c.id.as_str()), ("docker", ID));
    }

    #[test]
    fn kubernetes_and_podman() {
        let k = container_from_cgroup_path(&format!(
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1.slice/cri-containerd-{ID}.scope"
        ))
        .expect("k8s");
        assert_eq!(k.runtime, "containerd");
        let k = container_from_cgroup_path(&format!("/kubepods/besteffort/pod1234/{ID}"))
            .expect("k8s cgroupfs");
        assert_eq!(k.runtime, "kubernetes");
        let p = container_from_cgroup_path(&format!("/machine.slice/libpod-{ID}.scope/container"))
            .expect("podman");
        assert_eq!(p.runtime, "podman");
    }

    #[test]
    fn host_processes_have_no_container() {
        assert_eq!(
            container_from_cgroup("0::/system.slice/ssh.service\n"),
            None
        );
        assert_eq!(
            container_from_cgroup("0::/user.slice/user-0.slice/session-1.scope"),
            None
        );
        assert_eq!(container_from_cgroup("0::/\n"), None);
        assert_eq!(container_from_cgroup("garbage"), None);
        // 64 hex characters not under a known runtime are not assumed to be a container.
        assert_eq!(container_from_cgroup_path(&format!("/custom/{ID}")), None);
    }

    #[test]
    fn docker_proxy_command_line() {
        let args = [
            "/usr/bin/docker-proxy",
            "-proto",
            "tcp",
            "-host-ip",
            "0.0.0.0",
            "-host-port",
            "18789",
            "-container-ip",
            "172.17.0.2",
            "-container-port",
            "18789",
            "-use-listen-fd",
        ];
        let p = parse_docker_proxy(&args).expect("docker-proxy");
        assert_eq!(p.proto, Proto::Tcp);
        assert_eq!(p.host_ip, "0.0.0.0");
        assert_eq!(p.host_port, 18789);
        assert_eq!(p.container_ip, "172.17.0.2");
        assert_eq!(p.container_port, 18789);
        let p = parse_docker_proxy(&[
            "--proto=udp",
            "--host-ip=127.0.0.1",
            "--host-port=53",
            "--container-ip=10.0.0.2",
            "--container-port=53",
        ])
        .expect("long form");
        assert_eq!((p.proto, p.host_port), (Proto::Udp, 53));
    }

    #[test]
    fn incomplete_docker_proxy_is_none() {
        assert_eq!(parse_docker_proxy(&["docker-proxy", "-proto", "tcp"]), None);
        assert_eq!(parse_docker_proxy(&["docker-proxy", "-host-port"]), None);
        assert_eq!(parse_docker_proxy(&["-proto", "sctp"]), None);
        assert_eq!(parse_docker_proxy::<&str>(&[]), None);
    }
}
