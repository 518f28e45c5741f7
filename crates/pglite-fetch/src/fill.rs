//! Fills missing files from the source list, in order, recording every failed attempt.
//!
//! Each file is tried at each source until one yields bytes matching its pin; the npm
//! tarball is downloaded at most once per fill and all still-missing files are taken from
//! it. Nothing here decides *which* files are missing: the caller checks the cache under the
//! lock and passes the rest in.

use std::io::{self, Read};

use camino::{Utf8Path, Utf8PathBuf};

use crate::{
    Error, FetchOptions, Progress,
    archive::for_each_dist_file,
    cache::{ARCHIVE_PREFIX, Staged, cache_err},
    error::{Attempt, Reason},
    http::Http,
    pin::{FilePin, NpmPackage},
    source::{Source, expand_template, npm_package_tarball_url, npm_registry, npm_tarball_url},
};

/// Fetches every pin in `missing` into `dest` or fails listing all attempts.
pub(crate) async fn fill(opts: &FetchOptions, dest: &Utf8Path, missing: Vec<FilePin>) -> Result<(), Error> {
    let mut remaining = missing;
    let mut attempts = Vec::new();
    let mut http = None;
    for source in &opts.sources {
        if remaining.is_empty() {
            break;
        }
        match source {
            Source::Url(template) => {
                let http = lazy_http(&mut http, opts)?;
                let mut still_missing = Vec::new();
                for pin in remaining {
                    let url = expand_template(template, &opts.version, &pin.name);
                    match fetch_url(opts, http, &url, dest, &pin).await? {
                        Ok(()) => {}
                        Err(reason) => {
                            attempts.push(Attempt { file: pin.name.clone(), url, reason });
                            still_missing.push(pin);
                        }
                    }
                }
                remaining = still_missing;
            }
            Source::Dir(dir) => {
                let mut still_missing = Vec::new();
                for pin in remaining {
                    let path = dir.join(&pin.name);
                    let (dest, limit, pin_for_copy) = (dest.to_owned(), limit(opts, &pin), pin.clone());
                    let copy = {
                        let path = path.clone();
                        tokio::task::spawn_blocking(move || copy_local(&path, &dest, &pin_for_copy, limit))
                    };
                    match copy.await.expect("copying a local file panicked")? {
                        Ok(()) => {}
                        Err(reason) => {
                            attempts.push(Attempt { file: pin.name.clone(), url: path.to_string(), reason });
                            still_missing.push(pin);
                        }
                    }
                }
                remaining = still_missing;
            }
            Source::Npm(registry) => {
                let registry = registry.clone().or_else(npm_registry);
                let Some(registry) = registry else {
                    attempts.push(Attempt {
                        file: tarball_name(&opts.version),
                        url: "npm registry".to_owned(),
                        reason: Reason::NoNpmRegistry,
                    });
                    continue;
                };
                let http = lazy_http(&mut http, opts)?;
                // One tarball per package: the release's own, and those of extensions that are
                // packaged separately.
                let mut packages: Vec<Option<NpmPackage>> = Vec::new();
                for pin in &remaining {
                    if !packages.contains(&pin.package) {
                        packages.push(pin.package.clone());
                    }
                }
                for package in packages {
                    let (wanted, others): (Vec<FilePin>, Vec<FilePin>) =
                        remaining.into_iter().partition(|pin| pin.package == package);
                    let url = match &package {
                        None => npm_tarball_url(&registry, &opts.version),
                        Some(package) => npm_package_tarball_url(&registry, &package.name, &package.version),
                    };
                    remaining = fill_from_tarball(opts, http, &url, dest, wanted, &mut attempts).await?;
                    remaining.extend(others);
                }
            }
        }
    }
    if remaining.is_empty() {
        return Ok(());
    }
    let file = match remaining.as_slice() {
        [pin] => Some(pin.name.clone()),
        _ => None,
    };
    Err(Error::AllSourcesFailed { version: opts.version.clone(), file, attempts })
}

fn lazy_http<'a>(http: &'a mut Option<Http>, opts: &FetchOptions) -> Result<&'a Http, Error> {
    if http.is_none() {
        *http = Some(Http::new(opts.connect_timeout, opts.read_timeout)?);
    }
    Ok(http.as_ref().expect("just set"))
}

fn limit(opts: &FetchOptions, pin: &FilePin) -> u64 {
    pin.size.min(opts.max_file_size)
}

fn tarball_name(version: &str) -> String {
    format!("pglite-{version}.tgz")
}

fn report(opts: &FetchOptions, file: &str, url: &str) -> impl FnMut(u64, Option<u64>) + use<> {
    let progress = opts.progress.clone();
    let (file, url) = (file.to_owned(), url.to_owned());
    move |done, total| {
        if let Some(progress) = &progress {
            progress(Progress { file: file.clone(), done, total, source: url.clone() });
        }
    }
}

/// Outer `Err` is a cache failure (fatal); inner `Err` is this attempt's failure.
async fn fetch_url(
    opts: &FetchOptions,
    http: &Http,
    url: &str,
    dest: &Utf8Path,
    pin: &FilePin,
) -> Result<Result<(), Reason>, Error> {
    let mut staged = Staged::new(dest, pin)?;
    let mut progress = report(opts, &pin.name, url);
    let mut progress_with_pin_size = |done, total: Option<u64>| progress(done, total.or(Some(pin.size)));
    let downloaded = http.download(url, limit(opts, pin), &mut staged, &mut progress_with_pin_size).await;
    Ok(downloaded.and_then(|_| staged.commit()))
}

fn copy_local(path: &Utf8Path, dest: &Utf8Path, pin: &FilePin, limit: u64) -> Result<Result<(), Reason>, Error> {
    let mut staged = Staged::new(dest, pin)?;
    let copied = std::fs::File::open(path).and_then(|file| io::copy(&mut file.take(limit + 1), &mut staged));
    Ok(match copied {
        Err(err) => Err(Reason::Io(err)),
        Ok(n) if n > limit => Err(Reason::TooLarge { limit }),
        Ok(_) => staged.commit(),
    })
}

/// Downloads the tarball once into a temp file, then verifies and commits every wanted
/// entry. Returns the pins still missing.
async fn fill_from_tarball(
    opts: &FetchOptions,
    http: &Http,
    url: &str,
    dest: &Utf8Path,
    remaining: Vec<FilePin>,
    attempts: &mut Vec<Attempt>,
) -> Result<Vec<FilePin>, Error> {
    let name = tarball_name_from(url);
    let mut tgz = tempfile::Builder::new().prefix(ARCHIVE_PREFIX).tempfile_in(dest).map_err(cache_err(dest))?;
    let mut progress = report(opts, &name, url);
    let downloaded = {
        let mut writer = io::BufWriter::new(tgz.as_file_mut());
        let res = http.download(url, opts.max_archive_size, &mut writer, &mut progress).await;
        res.and_then(|n| io::Write::flush(&mut writer).map(|()| n).map_err(Reason::Io))
    };
    if let Err(reason) = downloaded {
        attempts.push(Attempt { file: name, url: url.to_owned(), reason });
        return Ok(remaining);
    }
    let (dest, url_owned, max_file_size) = (dest.to_owned(), url.to_owned(), opts.max_file_size);
    let extracted = tokio::task::spawn_blocking(move || extract(tgz, &dest, &url_owned, remaining, max_file_size));
    let (still_missing, mut new_attempts) = extracted.await.expect("extracting the tarball panicked")?;
    attempts.append(&mut new_attempts);
    Ok(still_missing)
}

fn extract(
    tgz: tempfile::NamedTempFile,
    dest: &Utf8PathBuf,
    url: &str,
    remaining: Vec<FilePin>,
    max_file_size: u64,
) -> Result<(Vec<FilePin>, Vec<Attempt>), Error> {
    let mut attempts = Vec::new();
    let mut done: Vec<String> = Vec::new();
    let mut fatal = None;
    let file = tgz.reopen().map_err(cache_err(dest))?;
    let walked = for_each_dist_file(
        io::BufReader::new(file),
        |name| remaining.iter().any(|pin| pin.name == name),
        |name, entry| {
            if done.iter().any(|done| done == name) {
                return;
            }
            let pin = remaining.iter().find(|pin| pin.name == name).expect("filtered by `wanted`");
            let limit = pin.size.min(max_file_size);
            let mut staged = match Staged::new(dest, pin) {
                Ok(staged) => staged,
                Err(err) => return fatal = Some(err),
            };
            let outcome = match io::copy(&mut entry.take(limit + 1), &mut staged) {
                Err(err) => Err(Reason::Io(err)),
                Ok(n) if n > limit => Err(Reason::TooLarge { limit }),
                Ok(_) => staged.commit(),
            };
            match outcome {
                Ok(()) => done.push(name.to_owned()),
                Err(reason) => attempts.push(Attempt { file: name.to_owned(), url: url.to_owned(), reason }),
            }
        },
    );
    if let Some(err) = fatal {
        return Err(err);
    }
    let still_missing: Vec<FilePin> = remaining.into_iter().filter(|pin| !done.contains(&pin.name)).collect();
    match walked {
        Err(reason) => attempts.push(Attempt { file: tarball_name_from(url), url: url.to_owned(), reason }),
        Ok(()) => {
            for pin in &still_missing {
                if !attempts.iter().any(|attempt| attempt.file == pin.name) {
                    attempts.push(Attempt {
                        file: pin.name.clone(),
                        url: url.to_owned(),
                        reason: Reason::NotInArchive,
                    });
                }
            }
        }
    }
    Ok((still_missing, attempts))
}

fn tarball_name_from(url: &str) -> String {
    url.rsplit('/').next().unwrap_or(url).to_owned()
}
