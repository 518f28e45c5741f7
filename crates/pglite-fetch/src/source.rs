//! Where artifacts come from: the source list, its text syntax and npm registry discovery.
//!
//! Sans-IO except [`npm_registry`], which reads the environment, `~/.npmrc` and, as a last
//! resort, asks `npm config get registry`. The registry's host is never hard-coded: it is
//! whatever the user's npm is configured to use.

use std::{fmt, str::FromStr};

use camino::Utf8PathBuf;

use crate::Error;

/// The project's CDN, tried first.
pub const NSELF_CDN: &str = "https://ping.nself.org/assets/pglite/{version}/{file}";
/// unpkg serves any npm package's files; tried second.
pub const UNPKG: &str = "https://unpkg.com/@electric-sql/pglite@{version}/dist/{file}";

/// One place to look for a release's files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A URL template with `{file}` and usually `{version}` placeholders.
    Url(String),
    /// A local directory holding the files as `<dir>/<file>`.
    Dir(Utf8PathBuf),
    /// The npm registry tarball of `@electric-sql/pglite@<version>`; the whole tarball is
    /// downloaded once per fill and the needed `package/dist/<file>` entries extracted.
    /// `None` discovers the registry from the user's npm configuration.
    Npm(Option<String>),
}

/// The built-in order: our CDN, unpkg, then the npm registry.
pub fn default_sources() -> Vec<Source> {
    vec![Source::Url(NSELF_CDN.to_owned()), Source::Url(UNPKG.to_owned()), Source::Npm(None)]
}

/// Parses a comma-separated source list (the `NSELF_PGLITE_SOURCES` syntax): each entry is
/// a URL template, `file://<dir>`, a directory path, `npm`, or `npm:<registry-url>`.
pub fn parse_sources(list: &str) -> Result<Vec<Source>, Error> {
    let res: Vec<Source> =
        list.split(',').map(str::trim).filter(|entry| !entry.is_empty()).map(str::parse).collect::<Result<_, _>>()?;
    if res.is_empty() {
        return Err(Error::InvalidSource { entry: list.to_owned(), reason: "the list is empty" });
    }
    Ok(res)
}

impl FromStr for Source {
    type Err = Error;

    fn from_str(entry: &str) -> Result<Source, Error> {
        let invalid = |reason| Error::InvalidSource { entry: entry.to_owned(), reason };
        if entry == "npm" {
            return Ok(Source::Npm(None));
        }
        if let Some(registry) = entry.strip_prefix("npm:") {
            if !is_http_url(registry) {
                return Err(invalid("`npm:` must be followed by an http(s) registry URL"));
            }
            return Ok(Source::Npm(Some(registry.to_owned())));
        }
        if is_http_url(entry) {
            if !entry.contains("{file}") {
                return Err(invalid("a URL template needs a `{file}` placeholder"));
            }
            return Ok(Source::Url(entry.to_owned()));
        }
        let dir = entry.strip_prefix("file://").unwrap_or(entry);
        if dir.is_empty() || entry.contains("://") && !entry.starts_with("file://") {
            return Err(invalid("expected an http(s) URL template, a directory, `npm` or `npm:<url>`"));
        }
        Ok(Source::Dir(Utf8PathBuf::from(dir)))
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Url(template) => f.write_str(template),
            Source::Dir(dir) => write!(f, "file://{dir}"),
            Source::Npm(None) => f.write_str("npm"),
            Source::Npm(Some(registry)) => write!(f, "npm:{registry}"),
        }
    }
}

fn is_http_url(text: &str) -> bool {
    text.starts_with("https://") || text.starts_with("http://")
}

/// Fills `{version}` and `{file}` into a URL template.
pub fn expand_template(template: &str, version: &str, file: &str) -> String {
    template.replace("{version}", version).replace("{file}", file)
}

/// The registry tarball URL of `@electric-sql/pglite@<version>`.
pub fn npm_tarball_url(registry: &str, version: &str) -> String {
    npm_package_tarball_url(registry, "@electric-sql/pglite", version)
}

/// The registry tarball URL of npm package `name` (scope included) at `version`.
pub fn npm_package_tarball_url(registry: &str, name: &str, version: &str) -> String {
    let registry = registry.trim_end_matches('/');
    let base = name.rsplit('/').next().unwrap_or(name);
    format!("{registry}/{name}/-/{base}-{version}.tgz")
}

/// The registry the user's npm would use for `@electric-sql/pglite`: `NPM_CONFIG_REGISTRY`
/// (or lowercase), else `~/.npmrc` (scoped `@electric-sql:registry=` first), else
/// `npm config get registry` when npm is on PATH. `None` when nothing is configured.
pub fn npm_registry() -> Option<String> {
    for name in ["NPM_CONFIG_REGISTRY", "npm_config_registry"] {
        if let Ok(value) = std::env::var(name)
            && is_http_url(value.trim())
        {
            return Some(value.trim().to_owned());
        }
    }
    let npmrc = std::env::home_dir().and_then(|home| std::fs::read_to_string(home.join(".npmrc")).ok());
    if let Some(registry) = npmrc.as_deref().and_then(registry_from_npmrc) {
        return Some(registry);
    }
    let output = std::process::Command::new("npm")
        .args(["config", "get", "registry"])
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    let registry = String::from_utf8(output.stdout).ok()?.trim().to_owned();
    (output.status.success() && is_http_url(&registry)).then_some(registry)
}

/// The registry an `.npmrc` sets for `@electric-sql` packages, scoped setting first.
pub fn registry_from_npmrc(npmrc: &str) -> Option<String> {
    let value_of = |wanted: &str| {
        npmrc.lines().find_map(|line| {
            let (key, value) = line.split_once('=')?;
            let value = value.trim().trim_matches('"');
            (key.trim() == wanted && is_http_url(value)).then(|| value.to_owned())
        })
    };
    value_of("@electric-sql:registry").or_else(|| value_of("registry"))
}
