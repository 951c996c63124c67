//! Destination checks for every relay: addresses, and names checked by what
//! they resolve to. Names used here resolve from /etc/hosts only.

use std::time::Duration;

use cloudproxy_server::allowlist::Allowlist;
use cloudproxy_server::destination::{Destination, DestinationError, permitted};

// No test here resolves a name that is not in /etc/hosts: that would send a
// DNS query off this machine.

const DNS: Duration = Duration::from_secs(5);

#[tokio::test]
async fn an_allowed_address_passes_canonicalised() {
    let list: Allowlist = "127.0.0.1:9000".parse().unwrap();
    let got = permitted(
        &Destination::Addr("[::ffff:127.0.0.1]:9000".parse().unwrap()),
        &list,
        DNS,
    )
    .await
    .unwrap();
    assert_eq!(got, vec!["127.0.0.1:9000".parse().unwrap()]);
}

#[tokio::test]
async fn a_name_resolving_to_a_forbidden_address_is_refused() {
    let list: Allowlist = "203.0.113.0/24".parse().unwrap();
    let err = permitted(&Destination::Name("localhost", 80), &list, DNS)
        .await
        .unwrap_err();
    assert!(err.is_policy(), "{err}");
    assert!(matches!(err, DestinationError::NameDenied { .. }));
    assert!(
        err.to_string()
            .contains("localhost:80 resolves only to addresses the relay may not reach"),
        "{err}"
    );
}

#[tokio::test]
async fn a_name_resolving_to_an_allowed_address_passes() {
    let list: Allowlist = "127.0.0.1".parse().unwrap();
    let got = permitted(&Destination::Name("localhost", 80), &list, DNS)
        .await
        .unwrap();
    assert_eq!(got, vec!["127.0.0.1:80".parse().unwrap()]);
}
