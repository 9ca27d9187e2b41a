//! The HTTP client of HTTP steps and component actions: rustls (ring), timeouts, and an
//! optional policy that refuses private, loopback and link-local addresses — checked on the
//! resolved address of every request and every redirect, for multi-tenant hosts.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use reqwest::dns::{Addrs, Name, Resolve, Resolving};

/// A call the egress policy refuses.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{target}: {why}, which the egress policy refuses")]
pub struct EgressDenied {
    pub target: String,
    pub why: &'static str,
}

/// Whether an address is not on the public internet: private, loopback, link-local, shared
/// (CGNAT), benchmarking, reserved, multicast, documentation, or an IPv6 form that embeds such
/// an IPv4 address (mapped, compatible, NAT64, 6to4).
pub fn is_private(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_private_v4(v4),
        IpAddr::V6(v6) => is_private_v6(v6),
    }
}

fn is_private_v4(v4: Ipv4Addr) -> bool {
    let [a, b, c, _] = v4.octets();
    v4.is_private()
        || v4.is_loopback()
        || v4.is_link_local()
        || v4.is_unspecified()
        || v4.is_broadcast()
        || v4.is_multicast()
        || v4.is_documentation()
        || a == 0 // 0.0.0.0/8 "this network"
        || (a == 100 && (b & 0xc0) == 64) // 100.64.0.0/10 shared (CGNAT)
        || (a == 192 && b == 0 && c == 0) // 192.0.0.0/24 protocol assignments
        || (a == 198 && (b & 0xfe) == 18) // 198.18.0.0/15 benchmarking
        || a >= 240 // 240.0.0.0/4 reserved
}

fn is_private_v6(v6: Ipv6Addr) -> bool {
    let seg = v6.segments();
    let embedded_v4 =
        |hi: u16, lo: u16| Ipv4Addr::new((hi >> 8) as u8, hi as u8, (lo >> 8) as u8, lo as u8);
    v6.is_loopback()
        || v6.is_unspecified()
        || v6.is_multicast()
        || (seg[0] & 0xfe00) == 0xfc00 // unique local
        || (seg[0] & 0xffc0) == 0xfe80 // link-local
        || (seg[0] & 0xffc0) == 0xfec0 // site-local (deprecated)
        || (seg[0] == 0x2001 && seg[1] == 0x0db8) // documentation
        || v6.to_ipv4_mapped().is_some_and(is_private_v4)
        // IPv4-compatible ::a.b.c.d (deprecated, still routed by some stacks)
        || (seg[..6] == [0; 6] && is_private_v4(embedded_v4(seg[6], seg[7])))
        // NAT64 64:ff9b::/96 and 64:ff9b:1::/48
        || (seg[0] == 0x64 && seg[1] == 0xff9b && is_private_v4(embedded_v4(seg[6], seg[7])))
        // 6to4 2002::/16 carries an IPv4 address in bits 16..48
        || (seg[0] == 0x2002 && is_private_v4(embedded_v4(seg[1], seg[2])))
}

/// Resolves names with the system resolver, dropping addresses the policy refuses.
struct PublicOnly;

impl Resolve for PublicOnly {
    fn resolve(&self, name: Name) -> Resolving {
        Box::pin(async move {
            let host = name.as_str().to_string();
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0))
                .await?
                .filter(|a| !is_private(a.ip()))
                .collect();
            if addrs.is_empty() {
                return Err(Box::new(EgressDenied {
                    target: host,
                    why: "it resolves only to private addresses",
                })
                    as Box<dyn std::error::Error + Send + Sync>);
            }
            Ok(Box::new(addrs.into_iter()) as Addrs)
        })
    }
}

/// Checks a URL's literal IP host against the policy (names are checked when resolved).
pub fn check_url(url: &reqwest::Url, deny_private: bool) -> Result<(), EgressDenied> {
    if !deny_private {
        return Ok(());
    }
    let ip = match url.host() {
        Some(url::Host::Ipv4(ip)) => Some(IpAddr::V4(ip)),
        Some(url::Host::Ipv6(ip)) => Some(IpAddr::V6(ip)),
        _ => None,
    };
    match ip {
        Some(ip) if is_private(ip) => Err(EgressDenied {
            target: url.to_string(),
            why: "a private address",
        }),
        _ => Ok(()),
    }
}

/// Whether an error (or any of its causes) is the egress policy's refusal.
pub fn is_egress_denial(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = cause {
        if e.downcast_ref::<EgressDenied>().is_some() {
            return true;
        }
        cause = e.source();
    }
    false
}

/// Builds the shared client.
pub fn client(deny_private: bool) -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let redirect = reqwest::redirect::Policy::custom(move |attempt| {
        if attempt.previous().len() >= 5 {
            return attempt.error("too many redirects");
        }
        match check_url(attempt.url(), deny_private) {
            Ok(()) => attempt.follow(),
            Err(e) => attempt.error(e),
        }
    });
    let mut builder = reqwest::Client::builder()
        .redirect(redirect)
        .connect_timeout(Duration::from_secs(10))
        .pool_max_idle_per_host(256)
        // Steps retry with their own backoff (and dead-letter at the end): the client's own
        // retry of HTTP/2 refusals would only copy every request in case it is needed.
        .retry(reqwest::retry::never().max_retries_per_request(0))
        .user_agent(concat!("weft/", env!("CARGO_PKG_VERSION")));
    if deny_private {
        // A proxy would resolve and connect on weft's behalf, out of the policy's sight
        // (`HTTP_PROXY` sending `localhost` or `metadata.google.internal` to it): with the
        // policy on, weft connects directly and checks every resolved address itself.
        builder = builder.no_proxy().dns_resolver(Arc::new(PublicOnly));
    }
    builder.build().expect("the HTTP client builds")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_addresses() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "192.168.0.1",
            "172.16.5.4",
            "169.254.169.254",
            "::1",
            "fe80::1",
            "fd00::1",
            "100.64.0.1",
            "::ffff:127.0.0.1",
            "64:ff9b::7f00:1",
            "64:ff9b::a9fe:a9fe",
            "2002:7f00:1::",
            "2002:a9fe:a9fe::1",
            "::127.0.0.1",
            "::10.0.0.1",
            "224.0.0.1",
            "ff02::1",
            "198.18.0.1",
            "198.19.255.254",
            "240.0.0.1",
            "255.255.255.255",
            "0.1.2.3",
            "192.0.0.8",
            "fec0::1",
        ] {
            assert!(is_private(ip.parse().unwrap()), "{ip}");
        }
        for ip in [
            "1.1.1.1",
            "8.8.8.8",
            "2606:4700::1111",
            "64:ff9b::808:808",
            "2002:808:808::1",
            "198.20.0.1",
        ] {
            assert!(!is_private(ip.parse().unwrap()), "{ip}");
        }
        assert!(check_url(&"http://169.254.169.254/latest".parse().unwrap(), true).is_err());
        assert!(check_url(&"http://169.254.169.254/latest".parse().unwrap(), false).is_ok());
    }
}
