//! The engine's registry side: `kiln pull` (platform choice or all platforms, byte progress),
//! `kiln push` (blobs in parallel, mounted from another repository of the registry when kiln
//! knows one holds them, then each platform's manifest by digest, and the tagged manifest or
//! index last, so a tag never names an incomplete image) and `kiln login`/`logout`.

use anyhow::{Context, Result};
use futures::stream::{self, StreamExt, TryStreamExt};
use kiln_registry::{
    ClientOptions, LoginStore, Platform, PushOptions, PushedBlob, Reference, RegistryClient,
};
use kiln_solver::images::{self, BlobProgress};

use crate::{normalize_name, Engine};
use kiln_cache::Store;
use kiln_exporter::{ManifestFormat, VariantOptions};

/// The manifest or index a push names last.
struct TopManifest {
    digest: String,
    media_type: String,
}

/// How many blobs a push uploads at once.
const PARALLEL_UPLOADS: usize = 4;

/// `kiln pull` settings.
#[derive(Clone, Default)]
pub struct PullOptions {
    /// `os/arch[/variant]` to pick from a multi-platform image (default: this host's).
    pub platform: Option<String>,
    /// Byte progress per layer download.
    pub progress: Option<BlobProgress>,
    /// Pull every platform of a multi-platform image and name its index (`--all-platforms`).
    pub all_platforms: bool,
}

/// What `kiln push` did, blob by blob.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PushReport {
    /// The pushed manifest's digest.
    pub digest: String,
    pub uploaded: usize,
    pub already_present: usize,
    pub mounted: usize,
    /// Platform manifests pushed by digest before the index (0 for a single-platform image).
    pub platform_manifests: usize,
}

impl Engine {
    /// `kiln pull`: fetches an image and its layers into the store, always asking the registry
    /// what the tag names now; layers already in the store are not downloaded again.
    pub async fn pull(&self, name: &str) -> Result<String> {
        self.pull_with(name, PullOptions::default()).await
    }

    /// [`Engine::pull`] with a platform and progress.
    pub async fn pull_with(&self, name: &str, opts: PullOptions) -> Result<String> {
        let _busy = self.busy.read().await;
        if opts.all_platforms {
            anyhow::ensure!(
                opts.platform.is_none(),
                "`--platform` and `--all-platforms` exclude each other: pass one"
            );
            let registry = self.solver.registry();
            return Ok(
                images::pull_all_platforms(&self.store, registry, name, opts.progress).await?,
            );
        }
        let platform = match &opts.platform {
            Some(p) => Platform::parse(p).context("`--platform`")?,
            None => self.solver.platform().clone(),
        };
        let registry = self.solver.registry();
        let image = images::resolve_image_progress(
            &self.store,
            registry,
            &platform,
            name,
            images::Lookup::Remote,
            opts.progress.clone(),
        )
        .await?;
        images::ensure_layers_with(&self.store, registry, &image, opts.progress).await?;
        Ok(image.manifest_digest)
    }

    /// `kiln push NAME [REF]`.
    pub async fn push(&self, name: &str, dest: Option<&str>) -> Result<String> {
        Ok(self.push_with(name, dest, None).await?.digest)
    }

    /// `kiln push NAME [REF]`: uploads a local image's blobs that the registry lacks, several at
    /// once, and then its manifest, so the tag never points at an incomplete image. A push cut
    /// off half-way leaves the tag as it was; the next one skips the blobs already there. Layers
    /// the store keeps uncompressed are pushed gzip-compressed, as `docker push` does (each is
    /// compressed once; the next push finds it in the store).
    pub async fn push_with(
        &self,
        name: &str,
        dest: Option<&str>,
        progress: Option<BlobProgress>,
    ) -> Result<PushReport> {
        let _busy = self.busy.read().await;
        let local = normalize_name(name)?;
        let record = self.store.images().get(&local)?.with_context(|| {
            format!("no image `{local}` in the local store: build, import or pull it first (see `kiln images`)")
        })?;
        let (digest, media_type) = if kiln_registry::is_index(&record.media_type) {
            (record.digest, record.media_type)
        } else {
            let format = if record.media_type == kiln_registry::media_type::DOCKER_MANIFEST {
                ManifestFormat::Docker
            } else {
                ManifestFormat::Oci
            };
            let opts = VariantOptions {
                format,
                ..VariantOptions::default()
            };
            let image = kiln_exporter::ImageDescriptor {
                manifest_digest: record.digest,
                manifest_size: record.size,
                config_digest: String::new(),
                media_type: record.media_type,
            };
            let store = self.store.clone();
            let v = tokio::task::spawn_blocking(move || {
                kiln_exporter::image_variant(&store, &image, &opts)
            })
            .await?
            .with_context(|| format!("cannot compress the layers of `{local}` for the push"))?;
            (v.manifest_digest, v.media_type)
        };
        self.push_manifest_of(&local, &digest, &media_type, dest.unwrap_or(name), progress)
            .await
    }

    /// Pushes the stored manifest (or index) `digest` of the local image `local` as `dest`.
    pub(crate) async fn push_manifest_of(
        &self,
        local: &str,
        digest: &str,
        media_type: &str,
        dest: &str,
        progress: Option<BlobProgress>,
    ) -> Result<PushReport> {
        let record = TopManifest {
            digest: digest.to_string(),
            media_type: media_type.to_string(),
        };
        let dest = Reference::parse(dest)?;
        let top = self.store.content().read_verified(&record.digest)?;
        // An index is pushed whole: each platform's blobs and manifest, then the index.
        let mut manifests = Vec::new();
        if kiln_registry::is_index(&record.media_type) {
            for entry in kiln_registry::parse_index(&dest, &top)? {
                let d = entry.descriptor;
                let platform = entry
                    .platform
                    .map_or_else(|| "no platform".to_string(), |p| p.to_string());
                anyhow::ensure!(
                    self.store.content().has(&d.digest),
                    "`{local}` is a multi-platform image but the local store lacks its `{platform}` \
                     manifest `{}`: pull the whole image with `kiln pull --all-platforms {local}`",
                    d.digest
                );
                manifests.push((images::load(&self.store, local, &d.digest)?, d.media_type));
            }
        } else {
            let image = images::load(&self.store, local, &record.digest)?;
            manifests.push((image, String::new()));
        }
        let mut blobs: Vec<(String, u64)> = Vec::new();
        for (image, _) in &manifests {
            let config = image.manifest.config();
            let layers = image.manifest.layers().iter();
            for (d, size) in std::iter::once((config.digest().to_string(), config.size()))
                .chain(layers.map(|l| (l.digest().to_string(), l.size())))
            {
                if !blobs.iter().any(|(b, _)| *b == d) {
                    blobs.push((d, size));
                }
            }
        }
        let registry = self.solver.registry().clone();
        let results = stream::iter(blobs)
            .map(|(digest, size)| {
                let registry = registry.clone();
                let dest = dest.clone();
                let store = self.store.clone();
                let progress = progress.clone();
                async move {
                    let progress = progress.map(|p| {
                        let d = digest.clone();
                        std::sync::Arc::new(move |done: u64| p(&d, done, size))
                            as kiln_registry::Progress
                    });
                    push_stored_blob(&store, &registry, &dest, &digest, size, progress).await
                }
            })
            .buffer_unordered(PARALLEL_UPLOADS)
            .try_collect::<Vec<PushedBlob>>()
            .await?;
        let mut platform_manifests = 0;
        if kiln_registry::is_index(&record.media_type) {
            for (image, media_type) in &manifests {
                let bytes = self.store.content().read(&image.manifest_digest)?;
                let by_digest = Reference {
                    tag: None,
                    digest: Some(image.manifest_digest.clone()),
                    ..dest.clone()
                };
                // Old indexes may leave an entry's type out; its manifest says what it is.
                let media_type = if media_type.is_empty() {
                    image
                        .manifest
                        .media_type()
                        .as_ref()
                        .map_or(kiln_registry::media_type::OCI_MANIFEST.to_string(), |m| {
                            m.to_string()
                        })
                } else {
                    media_type.clone()
                };
                registry
                    .push_manifest(&by_digest, &media_type, &bytes)
                    .await
                    .with_context(|| {
                        format!(
                            "cannot push manifest `{}` of the index to `{dest}`",
                            image.manifest_digest
                        )
                    })?;
                platform_manifests += 1;
            }
        }
        let digest = registry
            .push_manifest(&dest, &record.media_type, &top)
            .await
            .with_context(|| format!("cannot push the manifest to `{dest}`"))?;
        let count = |k: PushedBlob| results.iter().filter(|r| **r == k).count();
        Ok(PushReport {
            digest,
            uploaded: count(PushedBlob::Uploaded),
            already_present: count(PushedBlob::AlreadyPresent),
            mounted: count(PushedBlob::Mounted),
            platform_manifests,
        })
    }
}

/// `kiln login`: checks the credentials against the registry, then stores them where Docker
/// would (a credential helper named in the Docker config, else its `auths`). Returns the
/// normalised registry and where the credentials went.
pub async fn login(
    registry: &str,
    username: &str,
    password: &str,
    insecure_registries: &[String],
) -> Result<(String, LoginStore)> {
    let host = kiln_registry::registry_host(registry);
    anyhow::ensure!(
        !host.is_empty(),
        "`{registry}` is not a registry: pass a host such as `ghcr.io` or `127.0.0.1:5000`"
    );
    let client = RegistryClient::new(ClientOptions {
        insecure_registries: insecure_registries.to_vec(),
        ..ClientOptions::default()
    })?;
    client.check_login(&host, username, password).await?;
    let stored = kiln_registry::store_login(&host, username, password).await?;
    Ok((host, stored))
}

/// `kiln logout`: forgets the credentials for a registry. Returns the normalised registry and
/// whether there were any.
pub async fn logout(registry: &str) -> Result<(String, bool)> {
    let host = kiln_registry::registry_host(registry);
    let removed = kiln_registry::erase_login(&host).await?;
    Ok((host, removed))
}

/// Pushes the stored blob `digest` to `dest`: mounted from a repository of the same registry
/// that has it when kiln knows one, else uploaded. A lazily imported cache layer (not in the
/// store) is then fetched only when it cannot be mounted. Records `dest` as a source of the
/// blob, for the next push's mount.
pub(crate) async fn push_stored_blob(
    store: &Store,
    registry: &RegistryClient,
    dest: &Reference,
    digest: &str,
    size: u64,
    progress: Option<kiln_registry::Progress>,
) -> Result<PushedBlob> {
    let path = store.content().path(digest)?;
    let mount_from = images::blob_source(store, &dest.registry, digest)?;
    let opts = PushOptions {
        mount_from,
        progress,
    };
    let lazy = kiln_solver::lazy::is_lazy(store, digest)?;
    if lazy && opts.mount_from.is_none() {
        kiln_solver::lazy::fetch_blob(store, registry, digest).await?;
    }
    let mut pushed = registry
        .push_blob_with(dest, digest, size, &path, &opts)
        .await;
    if pushed.is_err() && lazy && !store.content().has(digest) {
        // The mount was refused and there was nothing to upload.
        kiln_solver::lazy::fetch_blob(store, registry, digest).await?;
        pushed = registry
            .push_blob_with(dest, digest, size, &path, &opts)
            .await;
    }
    let done = pushed.with_context(|| format!("cannot push blob `{digest}` to `{dest}`"))?;
    images::record_blob_source(store, dest, digest)?;
    Ok(done)
}
