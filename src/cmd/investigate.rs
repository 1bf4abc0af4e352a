//! `tapewatch investigate` (in progress).
#[derive(clap::Args, Debug, Clone)]
pub struct InvestigateArgs {
    pub tape: std::path::PathBuf,
}
pub fn run(_args: InvestigateArgs) -> Result<(), super::CmdError> {
    Err(super::CmdError::Failed("not yet".into()))
}
