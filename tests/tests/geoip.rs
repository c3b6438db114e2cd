//! GeoIP/ASN lookups against MaxMind-format databases the test builds itself (no root).

use netmon::classify::geo::{Geo, GeoInfo};
use netmon_tests::mmdb::{Writer, asn, country};

fn write(name: &str, w: &Writer) -> std::path::PathBuf {
    let p = std::env::temp_dir().join(format!("netmon-{name}-{}.mmdb", std::process::id()));
    std::fs::write(&p, w.build()).unwrap();
    p
}

#[test]
fn country_and_asn_from_two_databases() {
    let mut c = Writer::new("GeoLite2-Country");
    c.insert("198.18.0.0/24", country("XA"));
    c.insert("203.0.113.0/24", country("XB"));
    c.insert("2001:db8::/32", country("XC"));
    let mut a = Writer::new("GeoLite2-ASN");
    a.insert("198.18.0.0/16", asn(64500, "Test Net"));
    let (cp, ap) = (write("country", &c), write("asn", &a));
    let geo = Geo::open(&[cp.clone(), ap.clone()]).unwrap();
    assert_eq!(geo.dbs[0].database_type(), "GeoLite2-Country");
    assert_eq!(
        geo.lookup("198.18.0.2".parse().unwrap()),
        GeoInfo {
            country: Some("XA".into()),
            asn: Some(64500),
            as_org: Some("Test Net".into())
        }
    );
    assert_eq!(
        geo.lookup("203.0.113.77".parse().unwrap())
            .country
            .as_deref(),
        Some("XB")
    );
    assert_eq!(
        geo.lookup("2001:db8::5".parse().unwrap())
            .country
            .as_deref(),
        Some("XC")
    );
    // Outside every network: nothing known.
    assert!(geo.lookup("192.0.2.1".parse().unwrap()).is_empty());
    assert!(geo.lookup("2001:db9::1".parse().unwrap()).is_empty());
    // A file that is no database is refused with its path.
    std::fs::write(&cp, b"not a database").unwrap();
    let e = Geo::open(std::slice::from_ref(&cp)).err().unwrap();
    assert!(format!("{e:#}").contains(cp.to_str().unwrap()), "{e:#}");
    let _ = std::fs::remove_file(cp);
    let _ = std::fs::remove_file(ap);
}
