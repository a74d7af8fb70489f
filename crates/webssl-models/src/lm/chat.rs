//! Chat templates as code: the few prompt formats the recipes use, each reproducing the string its
//! reference produces (transformers' `apply_chat_template` on the model's Jinja template, or
//! Cambrian's `Conversation.get_prompt`), tested against those strings
//! (`fixtures/lm/chat_templates.json`, made by `fixtures/lm/make_lm.py`). No Jinja engine: a
//! template found in a checkpoint (`tokenizer_config.json`, `chat_template.jinja`, GGUF
//! `tokenizer.chat_template`) is recognised by its markers ([`ChatTemplate::detect`]).

use serde::{Deserialize, Serialize};

use crate::error::{ModelError, Result};

/// One turn of a conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// `system`, `user` or `assistant`.
    pub role: String,
    pub content: String,
}

impl Message {
    pub fn new(role: &str, content: &str) -> Self {
        Message {
            role: role.to_owned(),
            content: content.to_owned(),
        }
    }
}

/// Cambrian-1's `conv_llama_3` system prompt (`cambrian/conversation.py`, verbatim: the line breaks,
/// indentation and trailing spaces are part of the trained prompt).
pub const CAMBRIAN_SYSTEM: &str = "You are Cambrian, a highly intelligent multimodal AI trained by NYU Vision X. \n    As a multimodal AI, you have the ability to process and analyze images. Whenever an image is present in the conversation, very carefully examine it and consider its content when formulating your response.\n    You should give concise responses to very simple questions, but provide thorough responses to more complex and open-ended questions. ";

/// A prompt format.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ChatTemplate {
    /// Meta Llama 3 Instruct: `bos` once, then per message
    /// `<|start_header_id|>{role}<|end_header_id|>\n\n{content.strip()}<|eot_id|>`; the generation
    /// prompt is the assistant header.
    Llama3 { bos_token: String },
    /// Cambrian-1 `llama_v3` (`SeparatorStyle.LLAMA_3`): the system block, user/assistant turns
    /// without the blank line after the header, and always a trailing assistant header.
    CambrianLlama3 { system: String },
    /// ChatML (SmolLM2, Qwen2): `<|im_start|>{role}\n{content}<|im_end|>\n` per message, a default
    /// system message first when the conversation has none (SmolLM2's and Qwen2's templates each
    /// carry one).
    ChatMl { default_system: Option<String> },
    /// `SYSTEM: …\nUSER: …\nASSISTANT: …\n`, generation prompt `ASSISTANT:` (role upper-cased).
    Plain,
}

impl ChatTemplate {
    /// A template by name: `llama3`, `llama_v3` (Cambrian), `chatml`, `smollm2`, `qwen2`, `plain`.
    pub fn by_name(name: &str) -> Result<Self> {
        Ok(match name {
            "llama3" => ChatTemplate::Llama3 {
                bos_token: "<|begin_of_text|>".into(),
            },
            "llama_v3" | "cambrian_llama3" => ChatTemplate::CambrianLlama3 {
                system: CAMBRIAN_SYSTEM.into(),
            },
            "chatml" => ChatTemplate::ChatMl {
                default_system: None,
            },
            "smollm2" => ChatTemplate::ChatMl {
                default_system: Some(
                    "You are a helpful AI assistant named SmolLM, trained by Hugging Face".into(),
                ),
            },
            "qwen2" => ChatTemplate::ChatMl {
                default_system: Some("You are a helpful assistant.".into()),
            },
            "plain" => ChatTemplate::Plain,
            other => {
                return Err(ModelError::config(
                    "chat template",
                    format!(
                        "unknown `{other}` (expected llama3, llama_v3, chatml, smollm2, qwen2 or plain)"
                    ),
                ));
            }
        })
    }

    /// Recognises a checkpoint's Jinja chat template: Llama 3 (not 3.1, whose template adds dated
    /// system headers) or ChatML with its default system message. `None` for anything else.
    pub fn detect(jinja: &str, bos_token: &str) -> Option<Self> {
        if jinja.contains("<|start_header_id|>") {
            if jinja.contains("Cutting Knowledge Date") {
                return None;
            }
            return Some(ChatTemplate::Llama3 {
                bos_token: bos_token.to_owned(),
            });
        }
        if jinja.contains("<|im_start|>") {
            // `{{ '<|im_start|>system\n<default><|im_end|>\n' }}` inside the `!= 'system'` branch.
            const OPEN: &str = "<|im_start|>system\\n";
            let default_system = jinja.find(OPEN).and_then(|i| {
                let rest = &jinja[i + OPEN.len()..];
                let end = rest.find("<|im_end|>")?;
                Some(rest[..end].replace("\\n", "\n"))
            });
            return Some(ChatTemplate::ChatMl { default_system });
        }
        None
    }

    /// The prompt text for `messages`; `add_generation_prompt` appends the assistant's turn opener.
    pub fn render(&self, messages: &[Message], add_generation_prompt: bool) -> String {
        let mut s = String::new();
        match self {
            ChatTemplate::Llama3 { bos_token } => {
                s.push_str(bos_token);
                for m in messages {
                    s.push_str(&format!(
                        "<|start_header_id|>{}<|end_header_id|>\n\n{}<|eot_id|>",
                        m.role,
                        m.content.trim()
                    ));
                }
                if add_generation_prompt {
                    s.push_str("<|start_header_id|>assistant<|end_header_id|>\n\n");
                }
            }
            ChatTemplate::CambrianLlama3 { system } => {
                // Cambrian drops system messages of the conversation (its prompt has one system).
                let turns: Vec<&Message> = messages.iter().filter(|m| m.role != "system").collect();
                if !turns.is_empty() && !system.is_empty() {
                    s.push_str(&format!(
                        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>{system}<|eot_id|>"
                    ));
                }
                for (i, m) in turns.iter().enumerate() {
                    let role = if i % 2 == 0 { "user" } else { "assistant" };
                    if !m.content.is_empty() {
                        s.push_str(&format!(
                            "<|start_header_id|>{role}<|end_header_id|>{}<|eot_id|>",
                            m.content
                        ));
                    }
                }
                // `get_prompt` always ends with the assistant header.
                let _ = add_generation_prompt;
                s.push_str("<|start_header_id|>assistant<|end_header_id|>");
            }
            ChatTemplate::ChatMl { default_system } => {
                if let Some(system) = default_system
                    && messages.first().is_none_or(|m| m.role != "system")
                {
                    s.push_str(&format!("<|im_start|>system\n{system}<|im_end|>\n"));
                }
                for m in messages {
                    s.push_str(&format!(
                        "<|im_start|>{}\n{}<|im_end|>\n",
                        m.role, m.content
                    ));
                }
                if add_generation_prompt {
                    s.push_str("<|im_start|>assistant\n");
                }
            }
            ChatTemplate::Plain => {
                for m in messages {
                    s.push_str(&format!("{}: {}\n", m.role.to_uppercase(), m.content));
                }
                if add_generation_prompt {
                    s.push_str("ASSISTANT:");
                }
            }
        }
        s
    }

    /// The Jinja source that transformers' `apply_chat_template` renders like [`Self::render`]
    /// (for `Plain`, whose format has no upstream template; the fixture script uses it).
    pub const PLAIN_JINJA: &str = "{% for message in messages %}{{ message['role'] | upper + ': ' + message['content'] + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}";
}
