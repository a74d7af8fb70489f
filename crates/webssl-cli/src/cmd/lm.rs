//! `webssl lm`: decoder language models (`webssl_models::lm`).

use std::path::PathBuf;

use anyhow::{Context, bail};
use webssl_models::lm::{self, ChatTemplate};

#[derive(clap::Subcommand)]
pub enum Command {
    /// Greedy continuation of a prompt (KV cache; token for token what transformers' greedy
    /// `generate` produces).
    Generate(GenerateArgs),
}

#[derive(clap::Args)]
pub struct GenerateArgs {
    /// HF model directory (config.json, safetensors, tokenizer.json) or a .gguf file.
    #[arg(long)]
    model: PathBuf,
    /// The prompt text.
    #[arg(long)]
    prompt: String,
    /// At most this many new tokens (fewer when the model emits an end-of-sequence token).
    #[arg(long, default_value_t = 64)]
    max_new_tokens: usize,
    /// Wrap the prompt as a user turn in the model's chat template (with the assistant's opener).
    #[arg(long)]
    chat: bool,
    /// With --chat: use this template instead of the checkpoint's (llama3, llama_v3, chatml,
    /// smollm2, qwen2, plain).
    #[arg(long, requires = "chat")]
    template: Option<String>,
    /// Print one JSON object {prompt_ids, generated_ids, text} instead of the text.
    #[arg(long)]
    json: bool,
}

pub fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Generate(args) => generate(args),
    }
}

fn generate(args: GenerateArgs) -> anyhow::Result<()> {
    let device = crate::device::selected()?;
    let loaded = lm::load_lm(&args.model, &device)
        .with_context(|| format!("loading {}", args.model.display()))?;
    let template = match (&args.template, args.chat) {
        (Some(name), _) => Some(ChatTemplate::by_name(name)?),
        (None, true) => match &loaded.chat {
            Some(t) => Some(t.clone()),
            None => bail!(
                "{} has no chat template webssl recognises; name one with --template",
                args.model.display()
            ),
        },
        (None, false) => None,
    };
    let out = lm::complete(
        &loaded,
        &args.prompt,
        template.as_ref(),
        args.max_new_tokens,
    )?;
    if args.json {
        println!("{}", serde_json::to_string(&out)?);
    } else {
        println!("{}", out.text);
    }
    Ok(())
}
