//! OpenAI's wire format as isnad reads and writes it: request bodies, responses, stream chunks
//! and the error body.
//!
//! Only the fields isnad reads are typed. Every other field, at every level that has one
//! (`extra`), is kept as it came and serialised back unchanged, so a parameter OpenAI adds
//! tomorrow reaches the upstream without a release of isnad. An optional typed field the client
//! left out stays out when the body is serialised again; one it sent as `null` is dropped too
//! (OpenAI treats the two alike).
//!
//! Responses are read leniently (metadata an upstream leaves out defaults) and written in
//! OpenAI's shape, with the `null`s OpenAI sends (`finish_reason`, `logprobs`, `content`,
//! `param`, `code`).
//!
//! [`parse_json`] names the parameter at fault the way OpenAI does (`messages[1].role`), and the
//! `validate` methods add the range checks a type cannot express.

use std::{fmt::Write as _, num::NonZeroU64};

use serde::{de::DeserializeOwned, Deserialize, Serialize};
use serde_json::{Map, Value};
use serde_path_to_error::{Path, Segment};

use crate::RefusalCode;

/// A request or response body that does not fit the wire format, with the parameter at fault.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct WireError {
    /// What is wrong, for the client: names the parameter, never a Rust type.
    pub message: String,
    /// The parameter at fault (`model`, `messages[1].role`), OpenAI's `param`; `None` when the
    /// body as a whole is at fault.
    pub param: Option<String>,
}

impl WireError {
    fn at(param: &str, message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            param: Some(param.to_owned()),
        }
    }
}

/// Parses a JSON body into `T`, naming the parameter at fault: a wrong type or a missing field
/// gives `param` as a path such as `temperature`, `model` or `messages[0].role`; malformed JSON
/// gives a message starting "invalid JSON body" and a body that is not an object "the body must
/// be a JSON object", both without `param`.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, WireError> {
    let value: Value = serde_json::from_slice(bytes).map_err(|e| WireError {
        message: format!("invalid JSON body: {e}"),
        param: None,
    })?;
    if !value.is_object() {
        return Err(WireError {
            message: "the body must be a JSON object".into(),
            param: None,
        });
    }
    from_value(value, "")
}

/// Deserialises `value`, which sits at `prefix` in the body ("" for the body itself).
///
/// Going through a `Value` first (rather than straight from the bytes) keeps serde_json's
/// "at line 1 column 9" out of messages whose path already says where.
fn from_value<T: DeserializeOwned>(value: Value, prefix: &str) -> Result<T, WireError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let param = param_of(prefix, e.path());
        describe(param, &e.into_inner().to_string())
    })
}

fn param_of(prefix: &str, path: &Path) -> String {
    let mut out = prefix.to_owned();
    for segment in path {
        match segment {
            Segment::Seq { index } => {
                let _ = write!(out, "[{index}]");
            }
            Segment::Map { key } => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(key);
            }
            Segment::Enum { .. } | Segment::Unknown => {}
        }
    }
    out
}

/// Rewrites serde's message into a sentence about the parameter: "temperature must be a
/// number", "model is required".
fn describe(param: String, message: &str) -> WireError {
    if let Some(field) = message
        .strip_prefix("missing field `")
        .and_then(|m| m.strip_suffix('`'))
    {
        // serde reports a missing field at the object that lacks it.
        let param = if param.is_empty() {
            field.to_owned()
        } else {
            format!("{param}.{field}")
        };
        return WireError {
            message: format!("{param} is required"),
            param: Some(param),
        };
    }
    let predicate = if message.starts_with("must ") {
        // Our own messages (untagged enums' `expecting`) are already predicates.
        Some(message.to_owned())
    } else if message.starts_with("invalid type: ")
        || message.starts_with("invalid value: ")
        || message.starts_with("invalid length ")
    {
        // The value itself may contain ", expected "; the expectation comes last.
        message
            .rsplit_once(", expected ")
            .map(|(_, expected)| format!("must be {}", plain(expected)))
    } else {
        None
    };
    match (param.is_empty(), predicate) {
        (true, Some(p)) => WireError {
            message: format!("the body {p}"),
            param: None,
        },
        (true, None) => WireError {
            message: message.to_owned(),
            param: None,
        },
        (false, Some(p)) => WireError {
            message: format!("{param} {p}"),
            param: Some(param),
        },
        (false, None) => WireError {
            message: format!("{param}: {message}"),
            param: Some(param),
        },
    }
}

/// What serde expected, in JSON's words rather than Rust's.
fn plain(expected: &str) -> &str {
    match expected {
        "f32" | "f64" => "a number",
        "u8" | "u16" | "u32" | "u64" | "u128" | "usize" => "a non-negative integer",
        "i8" | "i16" | "i32" | "i64" | "i128" | "isize" => "an integer",
        "a sequence" => "an array",
        "a map" => "an object",
        e if e.starts_with("a nonzero u") => "a positive integer",
        e if e.starts_with("a nonzero i") => "a non-zero integer",
        e if e.starts_with("struct ") => "an object",
        e => e,
    }
}

wire_enum! {
    /// Who wrote a message.
    pub enum Role {
        /// Instructions from the application (older models).
        System = "system",
        /// The end user.
        User = "user",
        /// The model.
        Assistant = "assistant",
        /// The result of a tool call.
        Tool = "tool",
        /// Instructions from the application (newer models).
        Developer = "developer",
        /// The result of a function call (deprecated by OpenAI, still accepted).
        Function = "function",
    }
}

/// `POST /v1/chat/completions` body.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(expecting = "an object")]
pub struct ChatCompletionRequest {
    /// The model asked for (an id of isnad's registry, or `auto-router`).
    pub model: String,
    /// The conversation so far. [`validate`](Self::validate) refuses an empty one.
    pub messages: Vec<ChatMessage>,
    /// Whether to answer as a stream of chunks.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stream: Option<bool>,
    /// Options of a streamed answer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stream_options: Option<StreamOptions>,
    /// Most tokens to generate (older name).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<NonZeroU64>,
    /// Most tokens to generate, reasoning included.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_completion_tokens: Option<NonZeroU64>,
    /// Sampling temperature, 0 to 2.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    /// Nucleus sampling mass, 0 to 1.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f64>,
    /// Number of choices to generate.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub n: Option<NonZeroU64>,
    /// Where to stop generating.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stop: Option<Stop>,
    /// Tools the model may call (OpenAI's tool objects, passed on as they are).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tools: Option<Vec<Value>>,
    /// Whether and which tool to call: `"auto"`, `"none"`, `"required"` or an object.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_choice: Option<Value>,
    /// Structured output format (typed here because not every model supports it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub response_format: Option<Value>,
    /// The client's id for its end user.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Seed for reproducible sampling.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seed: Option<i64>,
    /// Every other field, passed on unchanged.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// One message of a conversation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(expecting = "an object")]
pub struct ChatMessage {
    /// Who wrote it.
    pub role: Role,
    /// What it says; absent (or `null`) on an assistant message that only calls tools.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content: Option<MessageContent>,
    /// Name of the participant.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Tool calls the assistant made (OpenAI's objects, passed on as they are).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<Value>>,
    /// The tool call a `tool` message answers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
    /// Every other field, passed on unchanged.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// A message's content: plain text, or parts (text, images, audio, files).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged, expecting = "must be a string or an array of content parts")]
pub enum MessageContent {
    /// Plain text.
    Text(String),
    /// Typed parts.
    Parts(Vec<ContentPart>),
}

/// One part of a message's content.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(expecting = "an object")]
pub struct ContentPart {
    /// The part's kind: `text`, `image_url`, `input_audio`, `file`, …
    pub r#type: String,
    /// The text of a `text` part.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// Every other field (`image_url`, `cache_control`, …), passed on unchanged.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// `stop`: one sequence or several.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged, expecting = "must be a string or an array of strings")]
pub enum Stop {
    /// One stop sequence.
    One(String),
    /// Several stop sequences.
    Many(Vec<String>),
}

/// `stream_options` of a chat request.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(expecting = "an object")]
pub struct StreamOptions {
    /// Whether the stream ends with a chunk that carries the usage (and no choices).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub include_usage: Option<bool>,
    /// Every other field, passed on unchanged.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl ChatCompletionRequest {
    /// Range checks the types cannot express, with the messages the gateway has always given:
    /// a non-empty `messages`, `temperature` in 0..=2, `top_p` in 0..=1.
    pub fn validate(&self) -> Result<(), WireError> {
        if self.messages.is_empty() {
            return Err(WireError::at(
                "messages",
                "messages must be a non-empty array",
            ));
        }
        within("temperature", self.temperature, 0.0, 2.0)?;
        within("top_p", self.top_p, 0.0, 1.0)
    }

    /// Removes isnad's own options from the body (see [`IsnadOptions::take`]).
    pub fn take_isnad_options(&mut self) -> Result<IsnadOptions, WireError> {
        IsnadOptions::take(&mut self.extra)
    }

    /// Whether the client asked for the usage chunk that ends a stream.
    pub fn client_wants_usage(&self) -> bool {
        self.stream == Some(true)
            && self
                .stream_options
                .as_ref()
                .and_then(|o| o.include_usage)
                .unwrap_or(false)
    }

    /// Asks the upstream for the usage chunk that ends a stream, whatever the client asked, so
    /// that every stream can be metered; returns [`client_wants_usage`](Self::client_wants_usage)
    /// as it was before, so that the gateway passes that chunk on only to a client that asked for
    /// it. A request that does not stream is left alone: its answer carries usage anyway, and
    /// OpenAI refuses `stream_options` without `stream`.
    pub fn with_upstream_usage(&mut self) -> bool {
        let client = self.client_wants_usage();
        if self.stream == Some(true) {
            self.stream_options
                .get_or_insert_with(StreamOptions::default)
                .include_usage = Some(true);
        }
        client
    }
}

fn within(param: &str, value: Option<f64>, lo: f64, hi: f64) -> Result<(), WireError> {
    match value {
        Some(x) if !(lo..=hi).contains(&x) => Err(WireError::at(
            param,
            format!("{param} must be a number between {lo} and {hi}"),
        )),
        _ => Ok(()),
    }
}

/// Most inputs one embeddings request may carry.
const MAX_EMBEDDING_INPUTS: usize = 2048;
const INPUT_REFUSED: &str = "input must be a non-empty string or array (at most 2048 items)";

wire_enum! {
    /// How embeddings are returned.
    pub enum EncodingFormat {
        /// JSON arrays of numbers.
        Float = "float",
        /// Base64 of little-endian `f32`s.
        Base64 = "base64",
    }
}

/// `POST /v1/embeddings` body.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(expecting = "an object")]
pub struct EmbeddingsRequest {
    /// The embedding model asked for.
    pub model: String,
    /// What to embed.
    pub input: EmbeddingInput,
    /// How to return the vectors.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub encoding_format: Option<EncodingFormat>,
    /// Length of the vectors, for models that can shorten them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dimensions: Option<NonZeroU64>,
    /// The client's id for its end user.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Every other field, passed on unchanged.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// `input` of an embeddings request.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(
    untagged,
    expecting = "must be a string, an array of strings or token ids, or an array of token id arrays"
)]
pub enum EmbeddingInput {
    /// One text.
    Text(String),
    /// Several texts.
    Texts(Vec<String>),
    /// One input, already tokenised.
    Tokens(Vec<u32>),
    /// Several inputs, already tokenised.
    TokenArrays(Vec<Vec<u32>>),
}

impl EmbeddingsRequest {
    /// Checks the types cannot express, with the message the gateway has always given: `input`
    /// is a non-empty string or a non-empty array of at most 2048 items.
    pub fn validate(&self) -> Result<(), WireError> {
        let ok = match &self.input {
            EmbeddingInput::Text(s) => !s.is_empty(),
            EmbeddingInput::Texts(v) => (1..=MAX_EMBEDDING_INPUTS).contains(&v.len()),
            EmbeddingInput::Tokens(v) => (1..=MAX_EMBEDDING_INPUTS).contains(&v.len()),
            EmbeddingInput::TokenArrays(v) => (1..=MAX_EMBEDDING_INPUTS).contains(&v.len()),
        };
        if ok {
            Ok(())
        } else {
            Err(WireError::at("input", INPUT_REFUSED))
        }
    }

    /// Removes isnad's own options from the body (see [`IsnadOptions::take`]).
    pub fn take_isnad_options(&mut self) -> Result<IsnadOptions, WireError> {
        IsnadOptions::take(&mut self.extra)
    }
}

wire_enum! {
    /// What the router optimises for.
    pub enum Profile {
        /// The cheapest model that fits.
        Cost = "cost",
        /// The best model that fits.
        Performance = "performance",
        /// A trade-off of the two.
        Balanced = "balanced",
    }
}

/// isnad's `routing` option.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(expecting = "an object")]
pub struct Routing {
    /// What to optimise for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub profile: Option<Profile>,
    /// Fields of `routing` this version does not know.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// Options a client gives isnad itself, in the body beside OpenAI's fields. They never reach an
/// upstream: [`take`](Self::take) removes them.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct IsnadOptions {
    /// `routing`.
    pub routing: Option<Routing>,
    /// `routing_preference`: a shorthand for `routing.profile`.
    pub routing_preference: Option<Profile>,
    /// `rag`: retrieval options, read by the retrieval stage.
    pub rag: Option<Value>,
}

/// The key under which the Node SDK sends `extra_body` (the Python SDK merges it into the body).
pub const EXTRA_BODY: &str = "extra_body";

impl IsnadOptions {
    /// The keys isnad reads, at the top level of the body or inside `extra_body`.
    pub const KEYS: [&'static str; 3] = ["routing", "routing_preference", "rag"];

    /// Removes isnad's keys from a body's unknown fields, both at the top level and inside an
    /// `extra_body` object (an `extra_body` left empty is removed too), and parses them.
    ///
    /// Where both places set a key, the top level wins, whole (`routing` is not merged field by
    /// field); the other is dropped unread. A value `null` counts as not set. An error names the
    /// key where it was found: `routing_preference` or `extra_body.routing.profile`.
    pub fn take(extra: &mut Map<String, Value>) -> Result<Self, WireError> {
        let mut nested = Map::new();
        if let Some(Value::Object(body)) = extra.get_mut(EXTRA_BODY) {
            for key in Self::KEYS {
                if let Some(v) = body.remove(key) {
                    nested.insert(key.to_owned(), v);
                }
            }
            if body.is_empty() {
                extra.remove(EXTRA_BODY);
            }
        }
        let mut pick = |key: &str| match (extra.remove(key), nested.remove(key)) {
            (Some(top), _) => Some((top, key.to_owned())),
            (None, Some(inner)) => Some((inner, format!("{EXTRA_BODY}.{key}"))),
            (None, None) => None,
        };
        Ok(Self {
            routing: option(pick("routing"))?,
            routing_preference: option(pick("routing_preference"))?,
            rag: pick("rag").map(|(v, _)| v).filter(|v| !v.is_null()),
        })
    }
}

fn option<T: DeserializeOwned>(picked: Option<(Value, String)>) -> Result<Option<T>, WireError> {
    match picked {
        Some((value, param)) => from_value(value, &param),
        None => Ok(None),
    }
}

/// Token counts of a chat answer.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Usage {
    /// Tokens of the prompt.
    #[serde(default)]
    pub prompt_tokens: u64,
    /// Tokens generated.
    #[serde(default)]
    pub completion_tokens: u64,
    /// Their sum.
    #[serde(default)]
    pub total_tokens: u64,
    /// Every other field (`prompt_tokens_details`, …), passed on unchanged.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// A non-streamed chat answer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChatCompletion {
    /// Answer id.
    #[serde(default)]
    pub id: String,
    /// `chat.completion`.
    #[serde(default)]
    pub object: String,
    /// Unix seconds.
    #[serde(default)]
    pub created: u64,
    /// The model that answered.
    #[serde(default)]
    pub model: String,
    /// The choices generated.
    #[serde(default)]
    pub choices: Vec<Choice>,
    /// Token counts.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
    /// Every other field (`system_fingerprint`, …), passed on unchanged.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// One choice of a non-streamed answer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Choice {
    /// Position among the choices.
    #[serde(default)]
    pub index: u32,
    /// The message generated.
    pub message: ResponseMessage,
    /// Why generation stopped (`stop`, `length`, `tool_calls`, …).
    pub finish_reason: Option<String>,
    /// Token log probabilities, when asked for.
    pub logprobs: Option<Value>,
    /// Every other field, passed on unchanged.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// The message of a non-streamed choice.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ResponseMessage {
    /// `assistant`.
    pub role: Role,
    /// The text, or `null` when the model only calls tools.
    pub content: Option<String>,
    /// Tool calls (OpenAI's objects, passed on as they are).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<Value>>,
    /// Every other field (`refusal`, `annotations`, …), passed on unchanged.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// One `data:` event of a streamed chat answer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChatCompletionChunk {
    /// Answer id, the same in every chunk.
    #[serde(default)]
    pub id: String,
    /// `chat.completion.chunk`.
    #[serde(default)]
    pub object: String,
    /// Unix seconds.
    #[serde(default)]
    pub created: u64,
    /// The model that answers.
    #[serde(default)]
    pub model: String,
    /// The choices' increments; empty in the usage chunk.
    #[serde(default)]
    pub choices: Vec<ChunkChoice>,
    /// Token counts: in the last chunk, when `stream_options.include_usage` asked for them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
    /// Every other field, passed on unchanged.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl ChatCompletionChunk {
    /// Whether this is the chunk that only carries usage (no choices): the one a client that did
    /// not ask for it must not get (see [`ChatCompletionRequest::with_upstream_usage`]).
    pub fn is_usage_only(&self) -> bool {
        self.choices.is_empty() && self.usage.is_some()
    }
}

/// One choice's increment in a chunk.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChunkChoice {
    /// Position among the choices.
    #[serde(default)]
    pub index: u32,
    /// What this chunk adds.
    #[serde(default)]
    pub delta: Delta,
    /// Why generation stopped; `null` until the choice's last chunk.
    pub finish_reason: Option<String>,
    /// Token log probabilities, when asked for.
    pub logprobs: Option<Value>,
    /// Every other field, passed on unchanged.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// What a chunk adds to a choice's message.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Delta {
    /// `assistant`, in the first chunk.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<Role>,
    /// More text.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    /// Pieces of tool calls (OpenAI's objects, passed on as they are).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<Value>>,
    /// Every other field (`refusal`, …), passed on unchanged.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// Token counts of an embeddings answer (no completion tokens).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct EmbeddingsUsage {
    /// Tokens of the input.
    #[serde(default)]
    pub prompt_tokens: u64,
    /// The same, as OpenAI repeats it.
    #[serde(default)]
    pub total_tokens: u64,
    /// Every other field, passed on unchanged.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// An embeddings answer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EmbeddingsResponse {
    /// `list`.
    #[serde(default)]
    pub object: String,
    /// One vector per input, in input order.
    pub data: Vec<Embedding>,
    /// The model that answered.
    #[serde(default)]
    pub model: String,
    /// Token counts.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<EmbeddingsUsage>,
    /// Every other field, passed on unchanged.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// One input's vector.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Embedding {
    /// `embedding`.
    #[serde(default)]
    pub object: String,
    /// Position of the input it embeds.
    pub index: u32,
    /// The vector.
    pub embedding: EmbeddingVector,
    /// Every other field, passed on unchanged.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// A vector as `encoding_format` asked for it. Numbers are `f32`, as every embedding model
/// produces them; serialise straight to bytes (not through `serde_json::Value`, which widens
/// them to `f64` digits).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum EmbeddingVector {
    /// `float`: the numbers.
    Float(Vec<f32>),
    /// `base64`: little-endian `f32`s, base64-encoded.
    Base64(String),
}

/// `GET /v1/models` answer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelList {
    /// `list`.
    pub object: String,
    /// The models.
    pub data: Vec<ModelObject>,
}

impl ModelList {
    /// A list of `data`.
    pub fn new(data: Vec<ModelObject>) -> Self {
        Self {
            object: "list".into(),
            data,
        }
    }
}

/// One model of a [`ModelList`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelObject {
    /// The id to put in `model`.
    pub id: String,
    /// `model`.
    #[serde(default)]
    pub object: String,
    /// Unix seconds.
    #[serde(default)]
    pub created: u64,
    /// Who serves it.
    #[serde(default)]
    pub owned_by: String,
    /// Every other field (isnad adds `residency`, `kind`, …), passed on unchanged.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl ModelObject {
    /// A model `id` served by `owned_by`, created at 0, with no other fields.
    pub fn new(id: impl Into<String>, owned_by: impl Into<String>) -> Self {
        Self {
            id: id.into(),
            object: "model".into(),
            created: 0,
            owned_by: owned_by.into(),
            extra: Map::new(),
        }
    }
}

/// OpenAI's error body: `{"error": {"message", "type", "param", "code"}}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorObject,
}

/// The error inside an [`ErrorBody`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ErrorObject {
    /// What went wrong, for a person.
    pub message: String,
    /// The class of error (`invalid_request_error`, `server_error`, …).
    pub r#type: String,
    /// The parameter at fault; `null` (not absent) when none, as OpenAI sends it.
    pub param: Option<String>,
    /// The machine-readable reason; `null` when none.
    pub code: Option<String>,
    /// Every other field, passed on unchanged.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl ErrorBody {
    /// The body of a refusal: `code`'s string and `type`, with `message` and `param`.
    pub fn refusal(code: RefusalCode, message: impl Into<String>, param: Option<String>) -> Self {
        Self {
            error: ErrorObject {
                message: message.into(),
                r#type: code.error_type().into(),
                param,
                code: Some(code.as_str().into()),
                extra: Map::new(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use proptest::prelude::*;
    use serde_json::json;

    use super::*;

    fn parse<T: DeserializeOwned>(v: &Value) -> Result<T, WireError> {
        parse_json(&serde_json::to_vec(v).unwrap())
    }

    fn chat(v: &Value) -> ChatCompletionRequest {
        parse(v).unwrap()
    }

    /// Fields isnad does not know, at every level, reach the upstream exactly as sent; only
    /// isnad's own options are taken out.
    #[test]
    fn unknown_fields_survive_a_round_trip() {
        let sent = json!({
            "model": "m",
            "messages": [
                {"role": "developer", "content": "be brief", "x_tag": {"a": [1, 2]}},
                {"role": "user", "content": [
                    {"type": "text", "text": "what is this?",
                        "cache_control": {"type": "ephemeral"}},
                    {"type": "image_url",
                        "image_url": {"url": "data:image/png;base64,AAAA", "detail": "low"}},
                ]},
                {"role": "assistant", "tool_calls": [{"id": "c1", "type": "function",
                    "function": {"name": "f", "arguments": "{}"}}]},
                {"role": "tool", "tool_call_id": "c1", "content": "42"},
            ],
            "stream": true,
            "stream_options": {"include_usage": false, "continuous_usage_stats": true},
            "temperature": 0.7,
            "max_completion_tokens": 64,
            "stop": ["\n\n", "END"],
            "tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}],
            "tool_choice": "auto",
            "seed": -3,
            "logit_bias": {"50256": -100},
            "metadata": {"team": "x"},
            "parallel_tool_calls": false,
            "reasoning_effort": "low",
            "routing_preference": "cost",
            "rag": {"collection": "docs", "top_k": 4},
            "extra_body": {"routing": {"profile": "balanced"}, "guided_json": {"type": "object"}},
        });
        let mut req = chat(&sent);
        req.validate().unwrap();
        let opts = req.take_isnad_options().unwrap();
        assert_eq!(opts.routing_preference, Some(Profile::Cost));
        assert_eq!(
            opts.routing.and_then(|r| r.profile),
            Some(Profile::Balanced)
        );
        assert_eq!(opts.rag, Some(json!({"collection": "docs", "top_k": 4})));

        let mut expected = sent.clone();
        let top = expected.as_object_mut().unwrap();
        top.remove("routing_preference");
        top.remove("rag");
        top["extra_body"] = json!({"guided_json": {"type": "object"}});
        assert_eq!(serde_json::to_value(&req).unwrap(), expected);
    }

    #[test]
    fn isnad_options_from_the_python_and_the_node_sdk_agree() {
        let base = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]});
        let options = json!({"routing": {"profile": "performance"}, "rag": {"k": 1}});
        let mut python = base.clone();
        for (k, v) in options.as_object().unwrap() {
            python[k] = v.clone();
        }
        let mut node = base.clone();
        node["extra_body"] = options.clone();
        let mut taken = vec![];
        for body in [python, node] {
            let mut req = chat(&body);
            taken.push(req.take_isnad_options().unwrap());
            // Nothing of isnad's is left for the upstream, not even an empty `extra_body`.
            assert_eq!(serde_json::to_value(&req).unwrap(), base);
        }
        assert_eq!(taken[0], taken[1]);
        assert_eq!(
            taken[0].routing.as_ref().and_then(|r| r.profile),
            Some(Profile::Performance)
        );
    }

    #[test]
    fn the_top_level_wins_over_extra_body() {
        let mut req = chat(&json!({
            "model": "m", "messages": [{"role": "user", "content": "hi"}],
            "routing_preference": "cost",
            "extra_body": {"routing_preference": "performance", "rag": null},
        }));
        let opts = req.take_isnad_options().unwrap();
        assert_eq!(opts.routing_preference, Some(Profile::Cost));
        assert_eq!(opts.rag, None);
        assert!(req.extra.is_empty(), "{:?}", req.extra);
    }

    #[test]
    fn a_bad_isnad_option_names_where_it_was_found() {
        let mut req = chat(&json!({
            "model": "m", "messages": [{"role": "user", "content": "hi"}],
            "extra_body": {"routing": {"profile": "fastest"}},
        }));
        let err = req.take_isnad_options().unwrap_err();
        assert_eq!(err.param.as_deref(), Some("extra_body.routing.profile"));
        assert_eq!(
            err.message,
            "extra_body.routing.profile must be one of cost, performance, balanced"
        );
        let mut req = chat(&json!({
            "model": "m", "messages": [{"role": "user", "content": "hi"}],
            "routing_preference": 3,
        }));
        let err = req.take_isnad_options().unwrap_err();
        assert_eq!(err.param.as_deref(), Some("routing_preference"));
    }

    #[test]
    fn errors_name_the_parameter_in_plain_words() {
        let ok = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]});
        let with = |path: &[&str], v: Value| {
            let mut body = ok.clone();
            let mut at = &mut body;
            for p in &path[..path.len() - 1] {
                at = match p.parse::<usize>() {
                    Ok(i) => &mut at[i],
                    Err(_) => &mut at[*p],
                };
            }
            at[path[path.len() - 1]] = v;
            body
        };
        let mut no_model = ok.clone();
        no_model.as_object_mut().unwrap().remove("model");
        let first = ok["messages"][0].clone();
        let two = |second: Value| json!({"model": "m", "messages": [first.clone(), second]});
        let roles = "must be one of system, user, assistant, tool, developer, function";
        let positive = "must be a positive integer";
        let cases = [
            (
                with(&["temperature"], json!("hot")),
                "temperature",
                "must be a number",
            ),
            (no_model, "model", "is required"),
            (with(&["model"], json!(7)), "model", "must be a string"),
            (two(json!({"role": "robot"})), "messages[1].role", roles),
            (two(json!({"role": 5})), "messages[1].role", roles),
            (
                two(json!({"content": "x"})),
                "messages[1].role",
                "is required",
            ),
            (two(json!("hello")), "messages[1]", "must be an object"),
            (
                with(&["messages", "0", "content"], json!({"text": "x"})),
                "messages[0].content",
                "must be a string or an array of content parts",
            ),
            (
                with(&["messages"], json!("hi")),
                "messages",
                "must be an array",
            ),
            (
                with(&["stream"], json!("yes")),
                "stream",
                "must be a boolean",
            ),
            (
                with(&["stream_options"], json!({"include_usage": 1})),
                "stream_options.include_usage",
                "must be a boolean",
            ),
            (with(&["max_tokens"], json!(0)), "max_tokens", positive),
            (with(&["max_tokens"], json!(-1)), "max_tokens", positive),
            (with(&["n"], json!(1.5)), "n", positive),
            (with(&["tools"], json!({})), "tools", "must be an array"),
            (
                with(&["stop"], json!(["a", 1])),
                "stop",
                "must be a string or an array of strings",
            ),
            (with(&["seed"], json!("1")), "seed", "must be an integer"),
        ];
        for (body, param, predicate) in cases {
            assert_refused::<ChatCompletionRequest>(&body, param, predicate);
        }
    }

    /// `body` is refused with `param` named, and the message says "<param> <predicate>".
    fn assert_refused<T: DeserializeOwned + std::fmt::Debug>(
        body: &Value,
        param: &str,
        predicate: &str,
    ) {
        let err = parse::<T>(body).unwrap_err();
        assert_eq!(err.param.as_deref(), Some(param), "{body}");
        assert_eq!(err.message, format!("{param} {predicate}"), "{body}");
    }

    #[test]
    fn a_body_that_is_not_a_json_object_is_refused_as_a_whole() {
        let err = parse_json::<ChatCompletionRequest>(b"{\"model\": ").unwrap_err();
        assert!(err.message.starts_with("invalid JSON body: "), "{err}");
        assert_eq!(err.param, None);
        for body in [&b"[1, 2]"[..], b"\"hi\"", b"null"] {
            let err = parse_json::<EmbeddingsRequest>(body).unwrap_err();
            assert_eq!(
                err,
                WireError {
                    message: "the body must be a JSON object".into(),
                    param: None
                }
            );
        }
    }

    #[test]
    fn validate_keeps_the_range_checks_and_their_messages() {
        let body = |extra: Value| {
            let mut v = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]});
            for (k, x) in extra.as_object().unwrap() {
                v[k] = x.clone();
            }
            chat(&v).validate()
        };
        assert_eq!(body(json!({"temperature": 2, "top_p": 0})), Ok(()));
        let err = body(json!({"temperature": 2.5})).unwrap_err();
        assert_eq!(
            err,
            WireError::at(
                "temperature",
                "temperature must be a number between 0 and 2"
            )
        );
        let err = body(json!({"top_p": -0.1})).unwrap_err();
        assert_eq!(
            err,
            WireError::at("top_p", "top_p must be a number between 0 and 1")
        );
        let err = body(json!({"messages": []})).unwrap_err();
        assert_eq!(
            err,
            WireError::at("messages", "messages must be a non-empty array")
        );
    }

    #[test]
    fn embeddings_inputs_of_every_shape() {
        for input in [
            json!("a"),
            json!(["a", "b"]),
            json!([1, 2]),
            json!([[1], [2, 3]]),
        ] {
            let sent = json!({
                "model": "e", "input": input, "encoding_format": "base64", "dimensions": 8, "x": 1,
            });
            let mut req: EmbeddingsRequest = parse(&sent).unwrap();
            req.validate().unwrap();
            assert_eq!(req.take_isnad_options().unwrap(), IsnadOptions::default());
            assert_eq!(serde_json::to_value(&req).unwrap(), sent);
        }
        let refused = "input must be a non-empty string or array (at most 2048 items)";
        for input in [json!(""), json!([]), json!(vec!["x"; 2049])] {
            let req: EmbeddingsRequest = parse(&json!({"model": "e", "input": input})).unwrap();
            assert_eq!(req.validate(), Err(WireError::at("input", refused)));
        }
        let e = |extra: Value| {
            let mut v = json!({"model": "e", "input": "a"});
            v.as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            v
        };
        let shapes =
            "must be a string, an array of strings or token ids, or an array of token id arrays";
        for (body, param, predicate) in [
            (e(json!({"input": 5})), "input", shapes),
            (json!({"model": "e"}), "input", "is required"),
            (
                e(json!({"encoding_format": "hex"})),
                "encoding_format",
                "must be one of float, base64",
            ),
            (
                e(json!({"dimensions": 0})),
                "dimensions",
                "must be a positive integer",
            ),
        ] {
            assert_refused::<EmbeddingsRequest>(&body, param, predicate);
        }
    }

    /// The gateway meters every stream, but a client that did not ask for the usage chunk does
    /// not get it.
    #[test]
    fn usage_asked_for_upstream_is_told_apart_from_the_clients() {
        let base = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]});
        let mut streamed = base.clone();
        streamed["stream"] = json!(true);
        let mut asked = streamed.clone();
        asked["stream_options"] = json!({"include_usage": true});
        for (body, client) in [(streamed, false), (asked, true)] {
            let mut req = chat(&body);
            assert_eq!(req.client_wants_usage(), client);
            assert_eq!(req.with_upstream_usage(), client);
            assert_eq!(
                serde_json::to_value(&req).unwrap()["stream_options"],
                json!({"include_usage": true})
            );
        }
        // Not streamed: OpenAI refuses `stream_options` without `stream`.
        let mut req = chat(&base);
        assert!(!req.with_upstream_usage());
        assert_eq!(serde_json::to_value(&req).unwrap(), base);
    }

    #[test]
    fn chunks_round_trip_in_openais_shape() {
        let first = json!({
            "id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1_694_268_190,
            "model": "gpt-4o-mini", "system_fingerprint": "fp_1", "service_tier": "default",
            "choices": [{"index": 0, "delta": {"role": "assistant", "content": "", "refusal": null},
                "logprobs": null, "finish_reason": null}],
        });
        let last = json!({
            "id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1_694_268_190,
            "model": "gpt-4o-mini", "choices": [],
            "usage": {"prompt_tokens": 9, "completion_tokens": 12, "total_tokens": 21,
                "prompt_tokens_details": {"cached_tokens": 0}},
        });
        for (v, usage_only) in [(first, false), (last, true)] {
            let chunk: ChatCompletionChunk = parse(&v).unwrap();
            assert_eq!(chunk.is_usage_only(), usage_only);
            assert_eq!(serde_json::to_value(&chunk).unwrap(), v);
        }
        // An upstream that leaves out OpenAI's nulls still yields OpenAI's shape.
        let terse: ChatCompletionChunk =
            parse(&json!({"id": "c", "object": "chat.completion.chunk",
            "created": 1, "model": "m", "choices": [{"index": 0, "delta": {"content": "hi"}}]}))
            .unwrap();
        assert_eq!(
            serde_json::to_value(&terse).unwrap()["choices"][0],
            json!({"index": 0, "delta": {"content": "hi"}, "finish_reason": null, "logprobs": null})
        );
    }

    #[test]
    fn a_completion_round_trips() {
        let v = json!({
            "id": "chatcmpl-2", "object": "chat.completion", "created": 1, "model": "m",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": null,
                "refusal": null, "annotations": [],
                "tool_calls": [{"id": "c1", "type": "function",
                    "function": {"name": "f", "arguments": "{}"}}]},
                "logprobs": null, "finish_reason": "tool_calls"}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12},
            "system_fingerprint": null,
        });
        let answer: ChatCompletion = parse(&v).unwrap();
        assert_eq!(answer.usage.as_ref().map(|u| u.completion_tokens), Some(7));
        assert_eq!(serde_json::to_value(&answer).unwrap(), v);
    }

    #[test]
    fn embeddings_and_models_round_trip() {
        let v = json!({
            "object": "list", "model": "e",
            "data": [
                {"object": "embedding", "index": 0, "embedding": [0.0023064255, -0.009327292, 1.0]},
                {"object": "embedding", "index": 1, "embedding": "AACAPwAAAEA="},
            ],
            "usage": {"prompt_tokens": 8, "total_tokens": 8},
        });
        let answer: EmbeddingsResponse = parse(&v).unwrap();
        // Straight to bytes: the f32s print as they came.
        let back: Value = serde_json::from_slice(&serde_json::to_vec(&answer).unwrap()).unwrap();
        assert_eq!(back, v);

        let mut m = ModelObject::new("local-chat", "vllm");
        m.extra.insert("residency".into(), json!("local"));
        assert_eq!(
            serde_json::to_value(ModelList::new(vec![m])).unwrap(),
            json!({"object": "list", "data": [{"id": "local-chat", "object": "model", "created": 0,
                "owned_by": "vllm", "residency": "local"}]})
        );
    }

    #[test]
    fn error_bodies_in_openais_shape() {
        let body = ErrorBody::refusal(
            RefusalCode::ModelNotFound,
            "no such model",
            Some("model".into()),
        );
        assert_eq!(
            serde_json::to_value(&body).unwrap(),
            json!({"error": {"message": "no such model", "type": "invalid_request_error",
                "param": "model", "code": "model_not_found"}})
        );
        // OpenAI sends `param` (and `code`) as null, never leaves them out.
        let v = json!({"error": {
            "message": "slow down", "type": "rate_limit_error", "param": null, "code": null,
        }});
        let parsed: ErrorBody = parse(&v).unwrap();
        assert_eq!(parsed.error.param, None);
        assert_eq!(serde_json::to_value(&parsed).unwrap(), v);
        let body = ErrorBody::refusal(
            RefusalCode::InvalidApiKey,
            "invalid or missing API key",
            None,
        );
        assert_eq!(
            serde_json::to_value(&body).unwrap()["error"]["param"],
            Value::Null
        );
    }

    fn json_leaf() -> impl Strategy<Value = Value> {
        prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            // Quarters print and parse back exactly.
            (-1000i32..1000).prop_map(|q| Value::from(f64::from(q) / 4.0)),
            "[a-z \\\\\"é]{0,8}".prop_map(Value::from),
        ]
    }

    fn json_value() -> impl Strategy<Value = Value> {
        json_leaf().prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
                prop::collection::btree_map("[a-z_]{1,6}", inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    /// Keys no typed field or isnad option uses.
    fn unknown_fields() -> impl Strategy<Value = Map<String, Value>> {
        prop::collection::btree_map("x_[a-z_]{1,8}", json_value(), 0..4)
            .prop_map(|m| m.into_iter().collect())
    }

    proptest! {
        #[test]
        fn any_unknown_field_at_any_level_round_trips(
            top in unknown_fields(),
            message in unknown_fields(),
            part in unknown_fields(),
        ) {
            let mut sent = json!({"model": "m", "messages": [
                {"role": "user", "content": [{"type": "text", "text": "hi"}]},
            ]});
            sent.as_object_mut().unwrap().extend(top);
            sent["messages"][0].as_object_mut().unwrap().extend(message);
            sent["messages"][0]["content"][0].as_object_mut().unwrap().extend(part);
            let mut req = chat(&sent);
            prop_assert_eq!(req.take_isnad_options().unwrap(), IsnadOptions::default());
            prop_assert_eq!(serde_json::to_value(&req).unwrap(), sent);
        }
    }
}
