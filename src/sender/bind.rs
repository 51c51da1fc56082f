//! Whether a `Bind` address can be bound in this pod: the address must be on
//! one of its interfaces (hostNetwork on a node holding it, or a secondary
//! interface). Binding a socket to it is the question Postfix will ask, so
//! the check asks the kernel the same way instead of reading interface lists.

use std::net::{IpAddr, UdpSocket};

/// The address the rendered master.cf binds transports to, if any.
pub fn bound_address(master_cf: &str) -> Option<IpAddr> {
    master_cf.lines().find_map(|line| {
        let option = line.trim().strip_prefix("-o ")?;
        let (key, value) = option.split_once('=')?;
        matches!(key.trim(), "smtp_bind_address" | "smtp_bind_address6")
            .then(|| value.trim().parse().ok())
            .flatten()
    })
}

/// `Ok` when `ip` is on an interface of this network namespace, else the
/// kernel's reason (typically "Cannot assign requested address").
pub fn check_address(ip: IpAddr) -> Result<(), std::io::Error> {
    UdpSocket::bind((ip, 0)).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bound_address_is_read_from_the_fragment_and_checked() {
        let fragment = "mf-x unix - - n - - smtp\n  -o syslog_name=postfix/mf-x\n  -o smtp_bind_address=127.0.0.1\n";
        assert_eq!(bound_address(fragment), Some("127.0.0.1".parse().unwrap()));
        assert_eq!(bound_address("mf-x unix - - n - - smtp\n"), None);
        assert!(check_address("127.0.0.1".parse().unwrap()).is_ok());
        // TEST-NET-3 is on no interface of a test machine.
        let err = check_address("203.0.113.77".parse().unwrap()).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::AddrNotAvailable, "{err}");
    }
}
