//! Geolocation and ASN of remote addresses from MaxMind-format databases (`.mmdb`: GeoLite2
//! Country/City/ASN, DB-IP, ip-location-db), read with the `maxminddb` crate. Several
//! databases can be given (a country one and an ASN one); each fills what it knows.

use std::{net::IpAddr, path::Path};

use anyhow::{Context as _, Result};
use serde::{Deserialize, Serialize};

/// What the databases know about one address.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct GeoInfo {
    /// ISO 3166-1 alpha-2 country code.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub country: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub asn: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub as_org: Option<String>,
}

impl GeoInfo {
    pub fn is_empty(&self) -> bool {
        self.country.is_none() && self.asn.is_none()
    }
}

#[derive(Deserialize)]
struct Country<'a> {
    #[serde(borrow)]
    iso_code: Option<&'a str>,
}

/// The fields netmon reads, under the names the common database families use.
#[derive(Deserialize)]
struct Record<'a> {
    /// GeoLite2/GeoIP2 Country and City, DB-IP.
    #[serde(borrow)]
    country: Option<Country<'a>>,
    #[serde(borrow)]
    registered_country: Option<Country<'a>>,
    /// ip-location-db's country databases.
    country_code: Option<&'a str>,
    /// GeoLite2 ASN, DB-IP ASN, ip-location-db ASN.
    autonomous_system_number: Option<u32>,
    autonomous_system_organization: Option<&'a str>,
}

pub struct GeoDb {
    pub path: String,
    reader: maxminddb::Reader<Vec<u8>>,
}

impl GeoDb {
    pub fn open(path: &Path) -> Result<Self> {
        let reader = maxminddb::Reader::open_readfile(path).with_context(|| {
            format!(
                "opening the GeoIP database {} (a MaxMind-format .mmdb file)",
                path.display()
            )
        })?;
        Ok(Self {
            path: path.display().to_string(),
            reader,
        })
    }

    pub fn database_type(&self) -> &str {
        &self.reader.metadata().database_type
    }

    fn fill(&self, ip: IpAddr, out: &mut GeoInfo) {
        let Ok(r) = self.reader.lookup(ip) else {
            return;
        };
        let Ok(Some(rec)) = r.decode::<Record<'_>>() else {
            return;
        };
        let country = rec
            .country
            .and_then(|c| c.iso_code)
            .or(rec.country_code)
            .or(rec.registered_country.and_then(|c| c.iso_code));
        if out.country.is_none() {
            out.country = country.map(str::to_string);
        }
        if out.asn.is_none() {
            out.asn = rec.autonomous_system_number;
            out.as_org = rec.autonomous_system_organization.map(str::to_string);
        }
    }
}

/// Every configured database; the first that knows a field wins.
#[derive(Default)]
pub struct Geo {
    pub dbs: Vec<GeoDb>,
}

impl Geo {
    pub fn open(paths: &[std::path::PathBuf]) -> Result<Self> {
        Ok(Self {
            dbs: paths
                .iter()
                .map(|p| GeoDb::open(p))
                .collect::<Result<_>>()?,
        })
    }

    pub fn lookup(&self, ip: IpAddr) -> GeoInfo {
        let mut out = GeoInfo::default();
        for db in &self.dbs {
            db.fill(ip, &mut out);
        }
        out
    }
}
