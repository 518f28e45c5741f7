//! [`Release`]: a PGlite release this build can both fetch (it is pinned in `pglite-fetch`) and
//! run (`pglite-host` has a profile for its line), resolved once from a version string. The
//! pins and the host profiles are the two tables that decide validity; this is the one place
//! that puts them together, and a test fails when they disagree.

use std::path::Path;

use crate::Error;

/// A pinned and hosted PGlite release.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Release {
    version: String,
    pg_major: u32,
}

impl Release {
    /// Every release this build can fetch and run, oldest first.
    pub fn all() -> Vec<Release> {
        pglite_fetch::pinned_releases()
            .into_iter()
            .filter_map(|pinned| {
                let pg_major = pglite_host::pg_major(&pinned.version)?;
                Some(Release { version: pinned.version, pg_major })
            })
            .collect()
    }

    /// The release `version`, if it is pinned and hosted; otherwise the error names the ones
    /// that are.
    pub fn parse(version: &str) -> Result<Release, Error> {
        pglite_fetch::pinned_release(version)?;
        let pg_major = pglite_host::pg_major(version)
            .ok_or_else(|| pglite_host::Error::UnsupportedVersion { version: version.to_owned() })?;
        Ok(Release { version: version.to_owned(), pg_major })
    }

    /// The release used unless one is asked for: [`DEFAULT_PGLITE_VERSION`](crate::DEFAULT_PGLITE_VERSION).
    pub fn default_release() -> Release {
        Release::parse(crate::DEFAULT_PGLITE_VERSION).expect("the default release is pinned and hosted")
    }

    /// The newest release that runs PostgreSQL `major`.
    pub fn for_major(major: u32) -> Option<Release> {
        Release::all().into_iter().rev().find(|release| release.pg_major == major)
    }

    /// The release to run a runtime directory's cluster with when none is asked for: the
    /// default for a new cluster or one of its PostgreSQL major version, else the release of
    /// the cluster's major (so a cluster made when another release was the default is not
    /// stranded). `Ok(Err(major))`: no release runs the cluster's major version, `major`.
    pub fn for_cluster(data_dir: &Path) -> Result<Result<Release, String>, Error> {
        let default = Release::default_release();
        let Some(found) = pglite_host::cluster_major(data_dir)? else {
            return Ok(Ok(default));
        };
        if found == default.pg_major.to_string() {
            return Ok(Ok(default));
        }
        Ok(found.parse().ok().and_then(Release::for_major).ok_or(found))
    }

    /// The npm version, e.g. `0.3.16`.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// The PostgreSQL major version it runs.
    pub fn pg_major(&self) -> u32 {
        self.pg_major
    }
}

impl std::fmt::Display for Release {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (PostgreSQL {})", self.version, self.pg_major)
    }
}

#[cfg(test)]
mod tests {
    use super::Release;

    #[test]
    fn every_pinned_release_is_hosted_and_the_default_is_one_of_them() {
        let pinned: Vec<String> = pglite_fetch::pinned_releases().into_iter().map(|r| r.version).collect();
        let hosted: Vec<String> = Release::all().into_iter().map(|r| r.version).collect();
        assert_eq!(pinned, hosted, "a pinned release has no host profile (pglite-host/src/profile.rs)");
        assert!(hosted.iter().any(|v| v == crate::DEFAULT_PGLITE_VERSION));
        assert_eq!(Release::default_release().version(), crate::DEFAULT_PGLITE_VERSION);
    }

    #[test]
    fn unknown_versions_are_refused_naming_the_known_ones() {
        let err = Release::parse("0.0.1").unwrap_err().to_string();
        assert!(err.contains(crate::DEFAULT_PGLITE_VERSION), "{err}");
        let newest_16 = Release::for_major(16).expect("a PostgreSQL 16 release");
        assert_eq!(newest_16.pg_major(), 16);
        assert_eq!(Release::for_major(12), None);
    }

    #[test]
    fn a_cluster_keeps_the_release_of_its_major() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(Release::for_cluster(dir.path()).unwrap(), Ok(Release::default_release()));
        std::fs::write(dir.path().join("PG_VERSION"), "16\n").unwrap();
        assert_eq!(Release::for_cluster(dir.path()).unwrap().unwrap().pg_major(), 16);
        std::fs::write(dir.path().join("PG_VERSION"), "12\n").unwrap();
        assert_eq!(Release::for_cluster(dir.path()).unwrap(), Err("12".to_owned()));
    }
}
