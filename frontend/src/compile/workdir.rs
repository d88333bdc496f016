//! `WORKDIR`: the new working directory, made (owned by the current `USER`) by a mkdir file op
//! unless it is `/`.

use super::{Compiler, Dispatch};
use crate::ast::Instruction;
use crate::instructions::WorkdirCommand;
use crate::util::join_abs;
use crate::FrontendError;
use kiln_llb::{file_action, op, FileAction, FileMkdir, FileOp, Op};

impl Compiler<'_> {
    pub(super) fn dispatch_workdir(
        &mut self,
        d: &mut Dispatch,
        instr: &Instruction,
        cmd: WorkdirCommand,
    ) -> Result<(), FrontendError> {
        let path = self.expand(d, instr, &cmd.path)?;
        let current = if d.image.working_dir.is_empty() {
            "/".to_string()
        } else {
            d.image.working_dir.clone()
        };
        let wd = join_abs(&current, &path);
        d.image.working_dir = wd.clone();
        let name = d.step_name(&format!("WORKDIR {path}"));
        let with_layer = wd != "/";
        if with_layer {
            let (inputs, base) = d.base_inputs();
            let op = Op {
                inputs,
                kind: Some(op::Kind::File(FileOp {
                    base,
                    actions: vec![FileAction {
                        action: Some(file_action::Action::Mkdir(FileMkdir {
                            path: wd.clone(),
                            mode: 0o755,
                            make_parents: true,
                            owner: d.user_chown(),
                        })),
                    }],
                })),
            };
            d.state = Some(self.add_op(op, name, instr, &d.meta_stage));
        }
        d.image.add_history(format!("WORKDIR {wd}"), !with_layer);
        Ok(())
    }
}
