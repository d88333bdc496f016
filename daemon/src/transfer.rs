//! The engine's registry side: `kiln pull` (platform choice, byte progress), `kiln push` (blobs
//! in parallel, mounted from another repository of the registry when kiln knows one holds them,
//! the manifest last so a tag never names an incomplete image) and `kiln login`/`logout`.

use anyhow::{Context, Result};
use futures::stream::{self, StreamExt, TryStreamExt};
use kiln_registry::{
    ClientOptions, LoginStore, Platform, PushOptions, PushedBlob, Reference, RegistryClient,
};
use kiln_solver::images::{self, BlobProgress};

use crate::{normalize_name, Engine};

/// How many blobs a push uploads at once.
const PARALLEL_UPLOADS: usize = 4;

/// `kiln pull` settings.
#[derive(Clone, Default)]
pub struct PullOptions {
    /// `os/arch[/variant]` to pick from a multi-platform image (default: this host's).
    pub platform: Option<String>,
    /// Byte progress per layer download.
    pub progress: Option<BlobProgress>,
}

/// What `kiln push` did, blob by blob.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PushReport {
    /// The pushed manifest's digest.
    pub digest: String,
    pub uploaded: usize,
    pub already_present: usize,
    pub mounted: usize,
}

impl Engine {
    /// `kiln pull`: fetches an image and its layers into the store, always asking the registry
    /// what the tag names now; layers already in the store are not downloaded again.
    pub async fn pull(&self, name: &str) -> Result<String> {
        self.pull_with(name, PullOptions::default()).await
    }

    /// [`Engine::pull`] with a platform and progress.
    pub async fn pull_with(&self, name: &str, opts: PullOptions) -> Result<String> {
        let platform = match &opts.platform {
            Some(p) => Platform::parse(p).context("`--platform`")?,
            None => self.solver.platform().clone(),
        };
        let registry = self.solver.registry();
        let image = images::resolve_image(&self.store, registry, &platform, name, true).await?;
        images::ensure_layers_with(&self.store, registry, &image, opts.progress).await?;
        Ok(image.manifest_digest)
    }

    /// `kiln push NAME [REF]`.
    pub async fn push(&self, name: &str, dest: Option<&str>) -> Result<String> {
        Ok(self.push_with(name, dest, None).await?.digest)
    }

    /// `kiln push NAME [REF]`: uploads a local image's blobs that the registry lacks, several at
    /// once, and then its manifest, so the tag never points at an incomplete image. A push cut
    /// off half-way leaves the tag as it was; the next one skips the blobs already there.
    pub async fn push_with(
        &self,
        name: &str,
        dest: Option<&str>,
        progress: Option<BlobProgress>,
    ) -> Result<PushReport> {
        let local = normalize_name(name)?;
        let record = self.store.images().get(&local)?.with_context(|| {
            format!("no image `{local}` in the local store: build, import or pull it first (see `kiln images`)")
        })?;
        let dest = Reference::parse(dest.unwrap_or(name))?;
        let image = images::load(&self.store, &local, &record.digest)?;
        let mut blobs = vec![(
            image.manifest.config().digest().to_string(),
            image.manifest.config().size(),
        )];
        for l in image.manifest.layers() {
            let d = l.digest().to_string();
            if !blobs.iter().any(|(b, _)| *b == d) {
                blobs.push((d, l.size()));
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
                    let path = store.content().path(&digest)?;
                    let mount_from = images::blob_source(&store, &dest.registry, &digest)?;
                    let opts = PushOptions {
                        mount_from,
                        progress: progress.map(|p| {
                            let d = digest.clone();
                            std::sync::Arc::new(move |done: u64| p(&d, done, size))
                                as kiln_registry::Progress
                        }),
                    };
                    let done = registry
                        .push_blob_with(&dest, &digest, size, &path, &opts)
                        .await
                        .with_context(|| format!("cannot push blob `{digest}` to `{dest}`"))?;
                    images::record_blob_source(&store, &dest, &digest)?;
                    anyhow::Ok(done)
                }
            })
            .buffer_unordered(PARALLEL_UPLOADS)
            .try_collect::<Vec<PushedBlob>>()
            .await?;
        let bytes = self.store.content().read(&record.digest)?;
        let digest = registry
            .push_manifest(&dest, &record.media_type, &bytes)
            .await
            .with_context(|| format!("cannot push the manifest to `{dest}`"))?;
        let count = |k: PushedBlob| results.iter().filter(|r| **r == k).count();
        Ok(PushReport {
            digest,
            uploaded: count(PushedBlob::Uploaded),
            already_present: count(PushedBlob::AlreadyPresent),
            mounted: count(PushedBlob::Mounted),
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
