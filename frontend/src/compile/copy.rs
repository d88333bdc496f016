//! `COPY` and `ADD`: sources from the context, a stage, an image, a heredoc, a URL or a git
//! repository, copied by one file op (merged onto the stage for `--link`).

use super::stage::CopySource;
use super::{add, git, parse_chown, Compiler, Dispatch};
use crate::ast::Instruction;
use crate::instructions::{display, CopyCommand, CopySourceArg};
use crate::util::{clean_path, join_abs};
use crate::FrontendError;
use kiln_llb::{file_action, op, FileAction, FileCopy, FileMkfile, FileOp, MergeOp, Op};

impl Compiler<'_> {
    pub(super) fn dispatch_copy(
        &mut self,
        d: &mut Dispatch,
        instr: &Instruction,
        cmd: CopyCommand,
    ) -> Result<(), FrontendError> {
        let is_add = cmd.add;
        let kw = cmd.keyword();
        if let Some(from) = &cmd.from {
            // As BuildKit: `--from` is taken as written (which stage it names must not depend on
            // a stage's variables), and a value the shell lexer would change is refused.
            let literal = crate::expand_word(from, &|_| None, self.df.escape);
            if !matches!(&literal, Ok(word) if word == from) {
                return Err(self.fail(
                    instr,
                    format!(
                        "variable expansion is not supported for `--from` (`--from={from}`): \
                         define a stage with `FROM` (an `ARG` before the first `FROM` may name \
                         its image) and copy from that stage"
                    ),
                ));
            }
        }
        let parents = cmd.parents;
        // Validated below, once the sources say whether it is a digest or a git commit.
        let checksum = match &cmd.checksum {
            None => None,
            Some(raw) => Some(self.expand(d, instr, raw)?),
        };
        // Only git sources have a `.git` to keep; BuildKit ignores the flag for the others.
        let keep_git_dir = cmd.keep_git_dir;
        // --link: the files are copied onto scratch and the result merged onto the base, so the
        // layer does not depend on (and need not be rebuilt for) what is below it.
        let link = cmd.link;
        let excludes: Vec<String> = cmd
            .excludes
            .iter()
            .map(|e| self.expand(d, instr, e))
            .collect::<Result<_, _>>()?;
        let mode = match &cmd.chmod {
            None => -1,
            Some(raw) => {
                let m = self.expand(d, instr, raw)?;
                match u32::from_str_radix(&m, 8) {
                    Ok(v) if v <= 0o7777 && !m.is_empty() => v as i32,
                    _ => {
                        return Err(self.fail(
                            instr,
                            format!(
                                "`--chmod={m}` is not an octal mode: write it like `--chmod=0755`"
                            ),
                        ))
                    }
                }
            }
        };
        let owner = match &cmd.chown {
            None => None,
            Some(raw) => {
                let c = self.expand(d, instr, raw)?;
                if c.is_empty() {
                    return Err(
                        self.fail(instr, "`--chown` is empty: write `--chown=user[:group]`")
                    );
                }
                Some(parse_chown(&c))
            }
        };
        let dest_expanded = self.expand(d, instr, &cmd.dest)?;
        let mut srcs = Vec::new();
        for s in &cmd.sources {
            srcs.push(match s {
                CopySourceArg::Heredoc(name) => (true, name.clone()),
                CopySourceArg::Path(raw) => (false, self.expand(d, instr, raw)?),
            });
        }
        let current = if d.image.working_dir.is_empty() {
            "/".to_string()
        } else {
            d.image.working_dir.clone()
        };
        let mut dest = join_abs(&current, &dest_expanded);
        if (dest_expanded.is_empty() || dest_expanded == "." || dest_expanded.ends_with('/'))
            && !dest.ends_with('/')
        {
            dest.push('/');
        }

        let source = match &cmd.from {
            None => CopySource::Context,
            Some(raw) => self.copy_source(d, instr, raw)?,
        };
        let (mut inputs, base) = if link { (vec![], -1) } else { d.base_inputs() };
        // A git reference is checked first: `https://host/repo.git` is one, not a download.
        let git_ref = |heredoc: bool, s: &str| {
            if is_add && !heredoc {
                git::parse(s)
            } else {
                None
            }
        };
        let urls: Vec<&str> = srcs
            .iter()
            .filter(|(heredoc, s)| {
                is_add && !heredoc && add::is_http_url(s) && git_ref(*heredoc, s).is_none()
            })
            .map(|(_, s)| s.as_str())
            .collect();
        let all_git = srcs
            .iter()
            .all(|(heredoc, s)| git_ref(*heredoc, s).is_some());
        if let Some(c) = &checksum {
            if all_git {
                // The commit the ref must resolve to, as BuildKit checks it.
                git::validate_checksum(c).map_err(|m| self.fail(instr, m))?;
            } else if urls.is_empty() || urls.len() != srcs.len() {
                return Err(self.fail(
                    instr,
                    "`--checksum` applies to http(s) URL sources only (and git sources, as a \
                     commit hash): remove it, or add the file from its URL",
                ));
            } else {
                add::validate_checksum(c).map_err(|m| self.fail(instr, m))?;
            }
        }
        let needs_context = srcs.iter().any(|(heredoc, s)| {
            !(*heredoc || is_add && add::is_http_url(s) || git_ref(*heredoc, s).is_some())
        });
        let src_ref = match &source {
            CopySource::Context => {
                if needs_context {
                    Some(self.context_source())
                } else {
                    None
                }
            }
            CopySource::Stage(s) => s.clone(),
            CopySource::Image(s) => Some(s.clone()),
        };
        let src_input = match &src_ref {
            None => -1,
            Some(r) if !link && d.state.as_ref() == Some(r) => 0,
            Some(r) => {
                inputs.push(r.input());
                inputs.len() as i64 - 1
            }
        };

        // What every copy of this instruction shares: the destination, owner and mode, and
        // Docker's rules (follow symlinks, copy a directory's contents, make the destination).
        let copy = |src_input: i64, src: String| FileCopy {
            src_input,
            src,
            dest: dest.clone(),
            owner: owner.clone(),
            mode,
            follow_symlinks: true,
            dir_contents_only: true,
            create_dest_path: true,
            ..Default::default()
        };
        let mut actions = Vec::new();
        for (heredoc, src) in &srcs {
            if *heredoc {
                let Some(h) = cmd.heredocs.iter().find(|h| &h.name == src) else {
                    return Err(self.fail(instr, format!("heredoc `{src}` has no body")));
                };
                let data = if h.expand {
                    let lookup = |n: &str| self.checked_lookup(d, instr, n);
                    crate::expand_heredoc(&h.content, &lookup, self.df.escape).map_err(|e| {
                        self.fail(instr, format!("cannot expand heredoc `{}`: {e}", h.name))
                    })?
                } else {
                    h.content.clone()
                };
                let path = if dest.ends_with('/') {
                    format!("{dest}{}", h.name)
                } else {
                    dest.clone()
                };
                actions.push(FileAction {
                    action: Some(file_action::Action::Mkfile(FileMkfile {
                        path,
                        mode: if mode >= 0 { mode } else { 0o644 },
                        data: data.into_bytes(),
                        owner: owner.clone(),
                    })),
                });
                continue;
            }
            if let Some(r) = git_ref(false, src) {
                // The repository is its own source op (checked out at the resolved commit, keyed
                // by it), copied whole onto the destination like BuildKit's `llb.Git` state.
                let repo = self.add_op(
                    git::source(&r, keep_git_dir, checksum.as_deref()),
                    format!("[internal] git {src}"),
                    instr,
                    &d.meta_stage,
                );
                inputs.push(repo.input());
                actions.push(FileAction {
                    action: Some(file_action::Action::Copy(FileCopy {
                        exclude_patterns: excludes.clone(),
                        ..copy(inputs.len() as i64 - 1, "/".into())
                    })),
                });
                continue;
            }
            if is_add && add::is_http_url(src) {
                // The download is its own source op; the file it holds is copied like any
                // other, but never unpacked (as Docker does for remote archives).
                let named = add::url_filename(src);
                let filename = match (&named, dest.ends_with('/')) {
                    (Some(f), _) => Some(f.clone()),
                    // Into a directory: the server's Content-Disposition may name it.
                    (None, true) => None,
                    (None, false) => Some("__unnamed__".to_string()),
                };
                let http = add::http_source(src, filename.as_deref(), checksum.as_deref());
                let http_ref = self.add_op(
                    http,
                    format!("[internal] download {src}"),
                    instr,
                    &d.meta_stage,
                );
                inputs.push(http_ref.input());
                actions.push(FileAction {
                    action: Some(file_action::Action::Copy(copy(
                        inputs.len() as i64 - 1,
                        format!("/{}", filename.as_deref().unwrap_or("")),
                    ))),
                });
                continue;
            }
            let (copy_src, include_patterns) = if parents {
                let (dir, pattern) = add::parents_split(src);
                (clean_path(&format!("/{dir}")), vec![pattern])
            } else {
                (clean_path(&format!("/{src}")), vec![])
            };
            if parents && !dest.ends_with('/') {
                return Err(self.fail(
                    instr,
                    format!("`{kw} --parents` copies into a directory: write the destination as `{dest_expanded}/`"),
                ));
            }
            actions.push(FileAction {
                action: Some(file_action::Action::Copy(FileCopy {
                    allow_wildcard: !parents,
                    allow_empty_wildcard: true,
                    include_patterns,
                    exclude_patterns: excludes.clone(),
                    attempt_unpack: is_add,
                    ..copy(src_input, copy_src)
                })),
            });
        }
        let name = d.step_name(&display(instr));
        let op = Op {
            inputs,
            kind: Some(op::Kind::File(FileOp { base, actions })),
        };
        let copied = self.add_op(op, name.clone(), instr, &d.meta_stage);
        d.state = match (link, d.state.take()) {
            (true, Some(below)) => {
                let merge = Op {
                    inputs: vec![below.input(), copied.input()],
                    kind: Some(op::Kind::Merge(MergeOp { inputs: vec![0, 1] })),
                };
                Some(self.add_op(merge, format!("{name} (link)"), instr, &d.meta_stage))
            }
            _ => Some(copied),
        };
        let mut created_by = String::from(kw);
        for (heredoc, s) in &srcs {
            created_by.push(' ');
            if *heredoc {
                created_by.push_str("<<");
            }
            created_by.push_str(s);
        }
        created_by.push_str(&format!(" {dest_expanded} # buildkit"));
        d.image.add_history(created_by, false);
        Ok(())
    }
}
