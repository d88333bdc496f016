//! `kiln import --change`: Dockerfile-style config instructions applied to an image config, as
//! `docker import --change` does (CMD, ENTRYPOINT, ENV, EXPOSE, LABEL, USER, VOLUME, WORKDIR,
//! STOPSIGNAL).

use anyhow::{bail, Context, Result};
use oci_spec::image::Config;

/// Applies each change line to `config`.
pub(crate) fn apply_changes(config: &mut Config, changes: &[String]) -> Result<()> {
    for change in changes {
        let parsed = kiln_frontend::parse(change)
            .with_context(|| format!("`--change {change}` is not a Dockerfile instruction"))?;
        for ins in &parsed.instructions {
            apply_one(config, ins).with_context(|| format!("`--change {change}`"))?;
        }
    }
    Ok(())
}

fn shell_or_exec(ins: &kiln_frontend::Instruction) -> Vec<String> {
    if ins.json {
        ins.args.clone()
    } else {
        vec!["/bin/sh".into(), "-c".into(), ins.args.join(" ")]
    }
}

fn apply_one(config: &mut Config, ins: &kiln_frontend::Instruction) -> Result<()> {
    match ins.name.as_str() {
        "cmd" => {
            config.set_cmd(Some(shell_or_exec(ins)));
        }
        "entrypoint" => {
            config.set_entrypoint(Some(shell_or_exec(ins)));
        }
        "env" => {
            let mut env = config.env().clone().unwrap_or_default();
            for kv in ins.args.chunks(3) {
                if let [k, v, ..] = kv {
                    env.retain(|e| e.split('=').next() != Some(k.as_str()));
                    env.push(format!("{k}={v}"));
                }
            }
            config.set_env(Some(env));
        }
        "label" => {
            let mut labels = config.labels().clone().unwrap_or_default();
            for kv in ins.args.chunks(3) {
                if let [k, v, ..] = kv {
                    labels.insert(k.clone(), v.clone());
                }
            }
            config.set_labels(Some(labels));
        }
        "expose" => {
            let mut ports = config.exposed_ports().clone().unwrap_or_default();
            for p in ins.args.iter().flat_map(|a| a.split_whitespace()) {
                let p = if p.contains('/') { p.to_string() } else { format!("{p}/tcp") };
                if !ports.contains(&p) {
                    ports.push(p);
                }
            }
            config.set_exposed_ports(Some(ports));
        }
        "user" => {
            config.set_user(ins.args.first().cloned());
        }
        "workdir" => {
            config.set_working_dir(ins.args.first().cloned());
        }
        "stopsignal" => {
            config.set_stop_signal(ins.args.first().cloned());
        }
        "volume" => {
            let mut vols = config.volumes().clone().unwrap_or_default();
            let list: Vec<String> = if ins.json {
                ins.args.clone()
            } else {
                ins.args.iter().flat_map(|a| a.split_whitespace()).map(str::to_string).collect()
            };
            for v in list {
                if !vols.contains(&v) {
                    vols.push(v);
                }
            }
            config.set_volumes(Some(vols));
        }
        other => bail!(
            "`{}` cannot be used with `--change`: use one of CMD, ENTRYPOINT, ENV, EXPOSE, LABEL, USER, VOLUME, WORKDIR, STOPSIGNAL",
            other.to_uppercase()
        ),
    }
    Ok(())
}
