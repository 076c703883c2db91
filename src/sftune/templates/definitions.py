"""The built-in chat templates as plain data: one dict of format strings per model family.

A user-defined template is a dict with the same keys (see the comment above BUILTINS). The texts that
the tool styles write (Qwen's tool list, Llama 3.1's header) are here too: the renderer and the jinja
export both write them, and must write the same.
"""

from __future__ import annotations

from typing import Any

# The name of the model's own jinja chat_template, the default whenever the model has one.
TOKENIZER = "tokenizer"

QWEN_TOOLS_INTRO = (
    "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>"
)
QWEN_TOOLS_OUTRO = (
    "\n</tools>\n\nFor each function call, return a json object with function name and arguments within "
    '<tool_call></tool_call> XML tags:\n<tool_call>\n{"name": <function-name>, "arguments": <args-json-object>}\n'
    "</tool_call><|im_end|>\n"
)
QWEN35_TOOLS_INTRO = "# Tools\n\nYou have access to the following functions:\n\n<tools>"
QWEN35_TOOLS_OUTRO = (
    "\n</tools>"
    "\n\nIf you choose to call a function ONLY reply in the following format with NO suffix:\n\n"
    "<tool_call>\n<function=example_function_name>\n<parameter=example_parameter_1>\nvalue_1\n"
    "</parameter>\n<parameter=example_parameter_2>\nThis is the value for the second parameter\n"
    "that can span\nmultiple lines\n</parameter>\n</function>\n</tool_call>\n\n<IMPORTANT>\nReminder:\n"
    "- Function calls MUST follow the specified format: an inner <function=...></function> block must be nested "
    "within <tool_call></tool_call> XML tags\n"
    "- Required parameters MUST be specified\n"
    "- You may provide optional reasoning for your function call in natural language BEFORE the function call, "
    "but NOT after\n"
    "- If there is no function call available, answer the question like normal with your current knowledge and "
    "do not tell the user about function calls\n"
    "</IMPORTANT>"
)
GLM_TOOLS_INTRO = (
    "<|system|>\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>\n"
)
GLM_TOOLS_OUTRO = (
    "</tools>\n\nFor each function call, output the function name and arguments within the following XML format:\n"
    "<tool_call>{function-name}\n<arg_key>{arg-key-1}</arg_key>\n<arg_value>{arg-value-1}</arg_value>\n"
    "<arg_key>{arg-key-2}</arg_key>\n<arg_value>{arg-value-2}</arg_value>\n...\n</tool_call>"
)
LLAMA3_TOOLS_INTRO = (
    "Given the following functions, please respond with a JSON for a function call with its proper "
    "arguments that best answers the given prompt.\n\n"
    'Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}.'
    "Do not use variables.\n\n"
)
LLAMA31_DATE = "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n"
_VICUNA_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
_ALPACA_SYSTEM = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request."
)
_ALPACA_SYSTEM_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request."
)

# Keys of a template dict (user-defined templates use the same keys; only `user` and `assistant` are
# required):
#   description        one line for `sftune template list`
#   prefix             text before everything ("{bos}")
#   system             format of a system message; None folds it into the first user turn
#   system_in_user     when system is None: the first user content, e.g. "{system}\n\n{content}"
#   default_system     system text used when the conversation has none
#   user, assistant    formats; `assistant` starts with `generation_prompt`
#   user_with_input    optional: the user turn "instruction\n\ninput" (the data layer's Alpaca layout)
#                      laid out with {instruction} and {input}; default_system_with_input goes with it
#   generation_prompt  what add_generation_prompt appends: the model's reply starts after it
#   end                the end-of-turn text right after {content} in `assistant`; trained with the reply
#   suffix             text after the last message when no generation prompt is asked (Phi-3's EOS)
#   skip_empty_system  an empty system message renders nothing (Phi-3.5, Qwen3.8) instead of an empty system turn
#   strip              "content": strip each message's text (jinja `| trim`); "turn": strip the user
#                      text after the system is folded in (Llama 2's `content.strip()`); None: as is
#   tools              None, "qwen" (<tool_call> / <tool_response>), "llama3" (JSON calls, ipython turns;
#                      one call per assistant turn and no text beside it, as Llama 3.1's template allows),
#                      "qwen3.5" (<tool_call><function=name><parameter=key> XML) or "glm" (<tool_call>name
#                      <arg_key>/<arg_value>, results after <|observation|>) or "llama4" (JSON calls after
#                      <|python_start|>text<|python_end|>, ipython turns) or "gemma4" (call:name{...} inside
#                      <|tool_call>, results in the model turn) or "deepseek_v3.1" (name<｜tool▁sep｜>JSON arguments
#                      between DeepSeek's call markers); the last five come with their family's `layout`
#   layout             "qwen3.5", "glm4.5", "harmony", "nemotron3", "gemma4", "llama4", "mistral" or "deepseek_v3.1":
#                      the family's own
#                      turn layout
#                      (render.py's functions of that name), for layouts format strings cannot say; such a
#                      built-in has `official`
#   official           the file in templates/official/ holding the family's verbatim chat_template: the
#                      built-in renders it byte for byte (tests/templates/test_twins_current.py) and
#                      exports it as its jinja (deepseek_v3.1: its prompts byte for byte, its last reply as the
#                      model writes it; tests/templates/test_deepseek_v31.py)
#   official_switches  the template switches (switches.py) written into the exported official text: the mode the
#                      built-in renders (DeepSeek-V3.1's thinking)
#   preserve_thinking  with layout "qwen3.5" or "nemotron3": every reply keeps its think block (Qwen3.8's default,
#                      Nemotron 3's truncate_history_thinking false), so no reasoning is dropped (reasoning
#                      "preserved": nothing to split)
#   reasoning_instructions  with layout "qwen3.5": text that opens the system turn (Qwen3.8's reasoning effort)
#   arg_values         with tools "qwen3.5": "python" writes a non-JSON-container argument value as jinja's
#                      `string` filter does (Qwen3.5: True, None), "json" as `tojson` (Qwen3.6: true, null)
#   stops              texts besides `end` that end a reply (GLM: the next turn's header <|user|> or
#                      <|observation|>, trained with the reply it ends)
#   trim_earlier_call_text  with layout "nemotron3": False keeps the text of a tool-call turn before the last
#                      user message untrimmed after its emptied think block (Nemotron 3 Ultra)
#   dated_system       with tools "llama3": always write Llama 3.1's system header with its dates
#   reasoning          None, "qwen3", "deepseek_r1" or "deepseek_v3.1": assistant replies may open with a <think>
#                      block (the data layer's layout). qwen3: it is written only after the last user query, and the
#                      last reply always has one (empty when the data has none), as Qwen3's template does.
#                      deepseek_r1: every reply but the last loses what precedes its </think> (as the
#                      official template writes all replies); the last reply is written as the model writes
#                      it after the generation prompt: reasoning (empty when the data has none),
#                      "\n</think>\n\n", the answer. No tool calls (the official template has no sound layout).
#                      deepseek_v3.1 (with its layout): the same, the last reply written reasoning</think>answer
#                      (with tool calls: those of its official template, see the built-in)
#   think_prompt       with reasoning: text the generation prompt adds after `generation_prompt` (the open
#                      think block DeepSeek-R1's template prefills), written before the last reply too
#   enable_thinking    with reasoning: False appends the empty think block to the generation prompt
#                      (Qwen3's enable_thinking=False, the "no-think" mode)
#   no_think           with enable_thinking False: that empty block, where the family's is not Qwen's
#                      <think>\n\n</think>\n\n (GLM-4.5: \n<think></think>; Nemotron 3: <think></think>)
#   user_suffix        text ending every user message that does not end with it already (GLM-4.5's /nothink)
#   last_user_suffix   text appended to the last user message (Nemotron 3 Super's "\n\n{reasoning effort: low}")
#   tool               format of a tool result for templates without a tools style (default: as a user turn)
#   mistral            with layout "mistral": the tokenizer version whose layout it writes ("v3", "v7", "v13")
#   spaced             with layout "mistral": a sentencepiece tokenizer's space opens each text after a control
#                      token ("[INST] hi[/INST] Hello</s>"), as mistral-common's encoding gives
#   think_open, think_close  the markers of a reply's reasoning block in this layout (default <think>, </think>)
#   bos, eos           the family's BOS / EOS text when no tokenizer is given
#   bos_only_if_added  {bos} is written only for tokenizers that add a BOS themselves (a convention of
#                      the layout, not a token of its own: a ChatML model's BOS is not written)
BUILTINS: dict[str, dict[str, Any]] = {
    "chatml": {
        "description": "ChatML (<|im_start|>role ... <|im_end|>); tools as Qwen's <tool_call> tags",
        "system": "<|im_start|>system\n{content}<|im_end|>\n",
        "user": "<|im_start|>user\n{content}<|im_end|>\n",
        "assistant": "<|im_start|>assistant\n{content}<|im_end|>\n",
        "generation_prompt": "<|im_start|>assistant\n",
        "end": "<|im_end|>",
        "tool": "<|im_start|>tool\n{content}<|im_end|>\n",
        "tools": "qwen",
        "eos": "<|im_end|>",
    },
    "qwen2.5": {
        "description": "Qwen2.5-Instruct: ChatML with Qwen's default system prompt and tool calls",
        "system": "<|im_start|>system\n{content}<|im_end|>\n",
        "default_system": "You are Qwen, created by Alibaba Cloud. You are a helpful assistant.",
        "user": "<|im_start|>user\n{content}<|im_end|>\n",
        "assistant": "<|im_start|>assistant\n{content}<|im_end|>\n",
        "generation_prompt": "<|im_start|>assistant\n",
        "end": "<|im_end|>",
        "tools": "qwen",
        "eos": "<|im_end|>",
    },
    "llama2": {
        "description": "Llama-2-chat: <s>[INST] <<SYS>> ... <</SYS>> ... [/INST] reply </s>",
        "system": None,
        "system_in_user": "<<SYS>>\n{system}\n<</SYS>>\n\n{content}",
        "user": "{bos}[INST] {content} [/INST]",
        "assistant": " {content} {eos}",
        "generation_prompt": "",
        "end": " {eos}",
        "strip": "turn",
        "bos": "<s>",
        "eos": "</s>",
    },
    "llama3": {
        "description": "Llama-3-Instruct headers and <|eot_id|>; tool turns as Llama 3.1 (JSON calls, ipython)",
        "prefix": "{bos}",
        "system": "<|start_header_id|>system<|end_header_id|>\n\n{content}<|eot_id|>",
        "user": "<|start_header_id|>user<|end_header_id|>\n\n{content}<|eot_id|>",
        "assistant": "<|start_header_id|>assistant<|end_header_id|>\n\n{content}<|eot_id|>",
        "generation_prompt": "<|start_header_id|>assistant<|end_header_id|>\n\n",
        "end": "<|eot_id|>",
        "strip": "content",
        "tools": "llama3",
        "bos": "<|begin_of_text|>",
        "eos": "<|eot_id|>",
    },
    "mistral": {
        "description": "Mistral-Instruct v0.1/v0.2 (tokenizer v1): <s> [INST] ... [/INST] reply</s>; system before the "
                       "first user text",
        "prefix": "{bos}",
        "system": None,
        "system_in_user": "{system}\n\n{content}",
        "user": " [INST] {content} [/INST]",
        "assistant": " {content}{eos}",
        "generation_prompt": "",
        "end": "{eos}",
        "bos": "<s>",
        "eos": "</s>",
    },
    "gemma": {
        "description": "Gemma (1-3): <start_of_turn>user/model ... <end_of_turn>; system before the first user text",
        "prefix": "{bos}",
        "system": None,
        "system_in_user": "{system}\n\n{content}",
        "user": "<start_of_turn>user\n{content}<end_of_turn>\n",
        "assistant": "<start_of_turn>model\n{content}<end_of_turn>\n",
        "generation_prompt": "<start_of_turn>model\n",
        "end": "<end_of_turn>",
        "strip": "content",
        "bos": "<bos>",
        "eos": "<eos>",
    },
    "phi3": {
        "description": "Phi-3-mini-instruct: <|user|> ... <|end|> <|assistant|>; EOS after the last turn",
        "system": "<|system|>\n{content}<|end|>\n",
        "user": "<|user|>\n{content}<|end|>\n",
        "assistant": "<|assistant|>\n{content}<|end|>\n",
        "generation_prompt": "<|assistant|>\n",
        "end": "<|end|>",
        "suffix": "{eos}",
        "eos": "<|endoftext|>",
    },
    "zephyr": {
        "description": "Zephyr-7b-beta: <|user|>\\n ... </s>\\n<|assistant|>\\n",
        "system": "<|system|>\n{content}{eos}\n",
        "user": "<|user|>\n{content}{eos}\n",
        "assistant": "<|assistant|>\n{content}{eos}\n",
        "generation_prompt": "<|assistant|>\n",
        "end": "{eos}",
        "eos": "</s>",
    },
    "vicuna": {
        "description": "Vicuna v1.1 (FastChat): SYSTEM USER: ... ASSISTANT: reply</s>",
        "prefix": "{bos}",
        "bos_only_if_added": True,
        "system": "{content} ",
        "default_system": _VICUNA_SYSTEM,
        "user": "USER: {content} ",
        "assistant": "ASSISTANT: {content}{eos}",
        "generation_prompt": "ASSISTANT:",
        "end": "{eos}",
        "bos": "<s>",
        "eos": "</s>",
    },
    "alpaca": {
        "description": "Stanford Alpaca: ### Instruction: / ### Input: / ### Response:",
        "prefix": "{bos}",
        "bos_only_if_added": True,
        "system": "{content}\n\n",
        "default_system": _ALPACA_SYSTEM,
        "default_system_with_input": _ALPACA_SYSTEM_INPUT,
        "user": "### Instruction:\n{content}\n\n",
        "user_with_input": "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n",
        "assistant": "### Response:{content}{eos}",
        "generation_prompt": "### Response:",
        "end": "{eos}",
        "bos": "<s>",
        "eos": "</s>",
    },
    "zh_instruct": {
        "description": "Chinese instruction layout: 指令：...\\n输入：...\\n输出：...",
        "prefix": "{bos}",
        "bos_only_if_added": True,
        "system": "{content}\n",
        "user": "指令：{content}\n",
        "user_with_input": "指令：{instruction}\n输入：{input}\n",
        "assistant": "输出：{content}{eos}\n",
        "generation_prompt": "输出：",
        "end": "{eos}",
        "eos": "</s>",
    },
    "zh_qa": {
        "description": "Chinese question/answer layout: 问题：...\\n回答：...",
        "prefix": "{bos}",
        "bos_only_if_added": True,
        "system": "{content}\n",
        "user": "问题：{content}\n",
        "assistant": "回答：{content}{eos}\n",
        "generation_prompt": "回答：",
        "end": "{eos}",
        "eos": "</s>",
    },
}


# Llama 3.1 is Llama 3 plus the dated system header its official template always writes.
BUILTINS["llama3.1"] = {
    **BUILTINS["llama3"],
    "description": "Llama-3.1-Instruct: Llama 3 plus the dated system header and its tool calls",
    "dated_system": True,
}

# SmolLM2-Instruct is ChatML with a default system prompt when the conversation has none.
BUILTINS["smollm2"] = {
    **BUILTINS["chatml"],
    "description": "SmolLM2-Instruct: ChatML with SmolLM's default system prompt",
    "default_system": "You are a helpful AI assistant named SmolLM, trained by Hugging Face",
}

# Phi-3.5-mini is Phi-3-mini except that an empty system message is left out.
BUILTINS["phi3.5"] = {
    **BUILTINS["phi3"],
    "description": "Phi-3.5-mini-instruct: Phi-3 layout; an empty system message is left out",
    "skip_empty_system": True,
}

# Qwen3 (hybrid thinking): ChatML with <think> blocks, no default system prompt, Qwen's tool calls.
BUILTINS["qwen3"] = {
    **BUILTINS["chatml"],
    "description": "Qwen3 thinking mode: ChatML, <think> kept after the last user query, Qwen's tool calls",
    "reasoning": "qwen3",
}
del BUILTINS["qwen3"]["tool"]

# Qwen3 with enable_thinking=False: the generation prompt ends with an empty think block.
BUILTINS["qwen3_nothink"] = {
    **BUILTINS["qwen3"],
    "description": "Qwen3 non-thinking mode (enable_thinking=False): an empty <think> block opens each reply",
    "enable_thinking": False,
}
NO_THINK = "<think>\n\n</think>\n\n"

# DeepSeek-R1's distilled models (Qwen and Llama bases ship the same template): the system text right
# after BOS, <｜User｜> / <｜Assistant｜> without separators, the generation prompt opens the think block.
_DEEPSEEK_TURNS = {  # DeepSeek's turns (R1-Distill, V3.1): BOS, the system text, <｜User｜> / <｜Assistant｜>
    "prefix": "{bos}",
    "system": "{content}",
    "user": "<｜User｜>{content}",
    "assistant": "<｜Assistant｜>{content}<｜end▁of▁sentence｜>",
    "generation_prompt": "<｜Assistant｜>",
    "end": "<｜end▁of▁sentence｜>",
    "bos": "<｜begin▁of▁sentence｜>",
    "eos": "<｜end▁of▁sentence｜>",
}
BUILTINS["deepseek_r1"] = {
    **_DEEPSEEK_TURNS,
    "description": "DeepSeek-R1-Distill (Qwen / Llama): <｜User｜>...<｜Assistant｜>; the prompt opens <think>, "
                   "earlier replies lose their reasoning",
    "reasoning": "deepseek_r1",
    "think_prompt": "<think>\n",
}

# DeepSeek-V3.1 (hybrid thinking), thinking on: BOS, every system message joined by blank lines, <｜User｜> /
# <｜Assistant｜> without separators. An earlier reply is written as its official template writes every reply:
# </think> and what follows the reply's first </think>. The prompt opens <think>, and the last reply is written as
# the model writes it after that prompt: reasoning, </think>, the answer (the official template would drop that
# reasoning too). Exported as its official text with thinking written in. Tool turns as the official template writes
# them, in both modes: a turn of calls after a user message opens "<｜Assistant｜></think>" (its calls are non-thinking),
# then its text as it is, <｜tool▁calls▁begin｜>, each <｜tool▁call▁begin｜>name<｜tool▁sep｜>arguments (JSON text)
# <｜tool▁call▁end｜>, <｜tool▁calls▁end｜> and the stop; each result <｜tool▁output▁begin｜>...<｜tool▁output▁end｜>; after a
# result no reply header: the reply runs on, as it is, through its stop. The tool list is written nowhere (the official
# template never reads it): declare the tools in the system message if the model should see them.
BUILTINS["deepseek_v3.1"] = {
    **_DEEPSEEK_TURNS,
    "description": "DeepSeek-V3.1 thinking mode: <｜User｜>...<｜Assistant｜><think>; the last reply's reasoning "
                   "kept, earlier replies written </think>answer; tool calls as its template writes them (the tool "
                   "list is not written: it ignores it)",
    "layout": "deepseek_v3.1",
    "official": "deepseek_v3.1.jinja",
    "official_switches": {"thinking": True},
    "reasoning": "deepseek_v3.1",
    "think_prompt": "<think>",
    "tools": "deepseek_v3.1",
}
# Its non-thinking mode (the official template's default): the prompt ends </think>; every reply, the last one
# included, is what follows its first </think>, so reasoning in the data is dropped (and said so at the start).
BUILTINS["deepseek_v3.1_nothink"] = {
    **BUILTINS["deepseek_v3.1"],
    "description": "DeepSeek-V3.1 non-thinking mode (its template's default): the prompt ends "
                   "<｜Assistant｜></think>; replies without reasoning; tool calls as its template writes them (the "
                   "tool list is not written: it ignores it)",
    "official_switches": {"thinking": False},
    "reasoning": None,
    "think_prompt": "</think>",
}

# Qwen3-Instruct-2507 (no thinking): Qwen3's layout without its think blocks, Qwen's tool calls.
BUILTINS["qwen3_2507"] = {
    **BUILTINS["qwen3"],
    "description": "Qwen3-Instruct-2507 (non-thinking): ChatML, no default system prompt, Qwen's tool calls",
}
del BUILTINS["qwen3_2507"]["reasoning"]

# Qwen3.5 (and 3.6): ChatML with every text trimmed, a <think> block on every reply after the last user
# query, tool calls as <function=...> XML. The thinking generation prompt opens the think block.
BUILTINS["qwen3.5"] = {
    "description": "Qwen3.5 thinking mode: ChatML, the prompt opens <think>, reasoning kept after the last user "
                   "query, XML tool calls",
    "layout": "qwen3.5",
    "official": "qwen3.5.jinja",
    "system": "<|im_start|>system\n{content}<|im_end|>\n",
    "user": "<|im_start|>user\n{content}<|im_end|>\n",
    "assistant": "<|im_start|>assistant\n{content}<|im_end|>\n",
    "generation_prompt": "<|im_start|>assistant\n",
    "end": "<|im_end|>",
    "strip": "content",
    "tools": "qwen3.5",
    "arg_values": "python",
    "reasoning": "qwen3",
    "think_prompt": "<think>\n",
    "eos": "<|im_end|>",
}
# Qwen3.5-2B and smaller ship the same template with thinking off by default: the prompt holds an empty
# think block.
BUILTINS["qwen3.5_nothink"] = {
    **BUILTINS["qwen3.5"],
    "description": "Qwen3.5 non-thinking mode (the default of Qwen3.5-2B and smaller): the prompt holds an empty "
                   "<think> block",
    "official": "qwen3.5_nothink.jinja",
    "think_prompt": "",
    "enable_thinking": False,
}
BUILTINS["qwen3.6"] = {
    **BUILTINS["qwen3.5"],
    "description": "Qwen3.6 thinking mode: Qwen3.5's layout; non-string tool arguments written as JSON",
    "official": "qwen3.6.jinja",
    "arg_values": "json",
}

# Qwen3.8: Qwen3.6's layout with a reasoning-effort instruction in the system turn (xhigh, its default) and
# every reply's reasoning kept (preserve_thinking, its default). Its template reads reasoning from a
# `reasoning_content` field only; the built-in takes a reply's <think> block as that field.
BUILTINS["qwen3.8"] = {
    **BUILTINS["qwen3.6"],
    "description": "Qwen3.8 thinking mode: Qwen3.6's layout, reasoning effort xhigh in the system turn, every "
                   "reply's reasoning kept",
    "official": "qwen3.8.jinja",
    "reasoning": "preserved",
    "preserve_thinking": True,
    "skip_empty_system": True,  # seen only without reasoning_instructions (reasoning_effort medium)
    "reasoning_instructions": "Reasoning effort is set to xhigh. Please think carefully through the task, validate "
                              "key assumptions, consider plausible alternatives, and prioritize correctness, "
                              "consistency, and clarity in the final answer.",
}

# GLM-4.5 (glm4_moe): [gMASK]<sop>, role headers with no end-of-turn text: a reply ends where the next
# header begins, and that header (<|user|> or <|observation|>) is the model's stop token, so it is trained
# with the reply. Every reply opens with a think block (empty before the last user message).
BUILTINS["glm4.5"] = {
    "description": "GLM-4.5: [gMASK]<sop><|user|>...<|assistant|>; the next <|user|> / <|observation|> ends a "
                   "reply; <think> blocks, XML tool calls",
    "layout": "glm4.5",
    "official": "glm4.5.jinja",
    "prefix": "[gMASK]<sop>",
    "system": "<|system|>\n{content}",
    "user": "<|user|>\n{content}",
    "assistant": "<|assistant|>{content}",
    "generation_prompt": "<|assistant|>",
    "end": "",
    "tools": "glm",
    "reasoning": "qwen3",
    "stops": ["<|user|>", "<|observation|>"],
    "eos": "<|endoftext|>",
}

# gpt-oss (Harmony): a system block of its own (identity, today's date, reasoning effort), the conversation's
# system text as developer instructions, replies in the final channel, reasoning in the analysis channel
# (kept on the last message only), one tool call per turn in the commentary channel. The last reply ends
# with <|return|> (what the model emits to stop), earlier ones with <|end|>, as the official template writes.
BUILTINS["gpt-oss"] = {
    "description": "gpt-oss Harmony: system + developer blocks, analysis / commentary / final channels, "
                   "<|return|> on the last reply",
    "layout": "harmony",
    "official": "gpt-oss.jinja",
    "system": "<|start|>developer<|message|># Instructions\n\n{content}\n\n<|end|>",
    "user": "<|start|>user<|message|>{content}<|end|>",
    "assistant": "<|start|>assistant<|channel|>final<|message|>{content}<|return|>",
    "generation_prompt": "<|start|>assistant",
    "end": "<|return|>",
    "tools": "harmony",
    "reasoning": "harmony",
    "reasoning_effort": "medium",
    "stops": ["<|call|>"],
    "eos": "<|return|>",
}

# Nemotron 3 Nano: ChatML with a system turn always written (empty without one), tools as an XML list,
# every reply opening with a think block (<think></think> when the data has none), calls as Qwen3.5's.
BUILTINS["nemotron3"] = {
    "description": "Nemotron 3 Nano: ChatML, the prompt opens <think>, earlier replies lose their reasoning, "
                   "XML tool calls",
    "layout": "nemotron3",
    "official": "nemotron3_nano.jinja",
    "system": "<|im_start|>system\n{content}<|im_end|>\n",
    "user": "<|im_start|>user\n{content}<|im_end|>\n",
    "assistant": "<|im_start|>assistant\n{content}<|im_end|>\n",
    "generation_prompt": "<|im_start|>assistant\n",
    "end": "<|im_end|>",
    "tools": "qwen3.5",
    "arg_values": "python",
    "reasoning": "qwen3",
    "think_prompt": "<think>\n",
    "eos": "<|im_end|>",
}

# Nemotron 3 Super: Nano's text plus a low_effort switch (off by default) that appends "{reasoning effort: low}" to
# the last user message; with it off, the same render.
BUILTINS["nemotron3_super"] = {
    **BUILTINS["nemotron3"],
    "description": "Nemotron 3 Super: Nemotron 3 Nano's layout (its low_effort switch off, the default)",
    "official": "nemotron3_super.jinja",
}
# Nemotron 3 Ultra: Nano's layout, except that a tool-call turn before the last user message keeps the text after
# its think block untrimmed (and a medium_effort switch, off by default).
BUILTINS["nemotron3_ultra"] = {
    **BUILTINS["nemotron3"],
    "description": "Nemotron 3 Ultra: Nemotron 3 Nano's layout; an earlier tool-call turn's text kept untrimmed",
    "official": "nemotron3_ultra.jinja",
    "trim_earlier_call_text": False,
}

# Gemma 4 (gemma4_v5.jinja, its current revision, thinking off: its default): <|turn>role ... <turn|>, a
# system turn for a system message or tools, a reply's reasoning as a thought channel written only after the
# last user message. Its template reads reasoning from `reasoning_content`; the built-in takes a reply's
# <think> block as that field. Tools are declared in the system turn (gemma4.py); a model turn holds the calls
# (<|tool_call>call:name{...}<tool_call|>), then the results (<|tool_response>response:name{...}<tool_response|>),
# then the reply's text, and the answer after the results runs on in the same turn. The model stops after its
# calls at <|tool_response>.
BUILTINS["gemma4"] = {
    "description": "Gemma 4: <|turn>user/model ... <turn|>; reasoning as <|channel>thought ...<channel|> after "
                   "the last user message; calls and their results inside the model turn",
    "layout": "gemma4",
    "official": "gemma4_v5.jinja",
    "prefix": "{bos}",
    "system": "<|turn>system\n{content}<turn|>\n",
    "user": "<|turn>user\n{content}<turn|>\n",
    "assistant": "<|turn>model\n{content}<turn|>\n",
    "generation_prompt": "<|turn>model\n",
    "end": "<turn|>",
    "stops": ["<|tool_response>"],
    "strip": "content",
    "reasoning": "qwen3",
    "think_open": "<|channel>thought",
    "think_close": "<channel|>",
    "tools": "gemma4",
    "bos": "<bos>",
    "eos": "<eos>",
}

# Llama 4 (Scout / Maverick Instruct): <|header_start|>role<|header_end|>\n\n ... <|eot|>, only the first system
# message trimmed. With tools: "Environment: ipython" in the system turn, the tool list in the first user turn
# (trimmed), a reply's calls as JSON after <|python_start|>its text<|python_end|>, results as ipython turns.
BUILTINS["llama4"] = {
    "description": "Llama 4: <|header_start|>role<|header_end|> ... <|eot|>; JSON tool calls after "
                   "<|python_start|>...<|python_end|>, results as ipython turns",
    "layout": "llama4",
    "official": "llama4.jinja",
    "prefix": "{bos}",
    "system": "<|header_start|>system<|header_end|>\n\n{content}<|eot|>",
    "user": "<|header_start|>user<|header_end|>\n\n{content}<|eot|>",
    "assistant": "<|header_start|>assistant<|header_end|>\n\n{content}<|eot|>",
    "generation_prompt": "<|header_start|>assistant<|header_end|>\n\n",
    "end": "<|eot|>",
    "tools": "llama4",
    "bos": "<|begin_of_text|>",
    "eos": "<|eot|>",
}

# Mistral's current layouts, as mistral-common (Mistral's own tokenization library) encodes them (reference
# encodings in tests/fixtures/mistral). No text follows [/INST]: the reply is the model's from there, through
# </s>. `mistral`: the tokenizer version. v3 (sentencepiece, `spaced`: each text after a control token starts
# with the tokenizer's space): the system prompt and the tool list go with the last user turn, calls as one
# JSON list with their ids, results as {"content", "call_id"} JSON. v7: a [SYSTEM_PROMPT] turn where the
# system message is, results as [TOOL_RESULTS]id[TOOL_CONTENT]content. v13 (Magistral): the tool list before
# the first user turn, each call [TOOL_CALLS]name[ARGS]arguments, results without ids, and a reply's
# reasoning as [THINK]...[/THINK], kept in every reply that has it.
_MISTRAL = {
    "layout": "mistral",
    "prefix": "{bos}",
    "system": "[SYSTEM_PROMPT]{content}[/SYSTEM_PROMPT]",
    "user": "[INST]{content}[/INST]",
    "assistant": "{content}{eos}",
    "generation_prompt": "",
    "end": "{eos}",
    "tools": "mistral",
    "bos": "<s>",
    "eos": "</s>",
}
BUILTINS["mistral_v3"] = {
    **_MISTRAL,
    "description": "Mistral tokenizer v3 (Mistral-7B-Instruct-v0.3, Mixtral-8x22B, Codestral): <s>[INST] ...[/INST] "
                   "reply</s>; system prompt and tools with the last user turn; [TOOL_CALLS] JSON",
    "official": "mistral_v3.jinja",
    "mistral": "v3",
    "spaced": True,
}
BUILTINS["mistral_v7_tekken"] = {
    **_MISTRAL,
    "description": "Mistral tokenizer v7 tekken (Mistral-Small-3.0 / 3.1, Devstral 2505): [SYSTEM_PROMPT]...; "
                   "[INST]...[/INST]reply</s>; tools with the last user turn; [TOOL_CALLS] JSON",
    "official": "mistral_v7_tekken.jinja",
    "mistral": "v7",
}
BUILTINS["magistral"] = {
    **_MISTRAL,
    "description": "Magistral (tokenizer v13 tekken): [SYSTEM_PROMPT]...; [INST]...[/INST][THINK]...[/THINK]reply</s>; "
                   "tools before the first user turn; [TOOL_CALLS]name[ARGS]{...}",
    "official": "magistral.jinja",
    "mistral": "v13",
    "reasoning": "preserved",
    "think_open": "[THINK]",
    "think_close": "[/THINK]",
}

# Names that also resolve, for users who know a model by another name.
ALIASES = {"qwen": "qwen2.5", "llama-2": "llama2", "llama-3": "llama3", "gemma2": "gemma", "gemma3": "gemma",
           "phi-3": "phi3", "phi-3.5": "phi3.5",
           "qwen3-nothink": "qwen3_nothink", "deepseek-r1": "deepseek_r1", "deepseek_r1_distill": "deepseek_r1",
           "deepseek-v3.1": "deepseek_v3.1", "deepseek_v31": "deepseek_v3.1",
           "deepseek-v3.1-nothink": "deepseek_v3.1_nothink", "deepseek_v31_nothink": "deepseek_v3.1_nothink",
           "qwen3-2507": "qwen3_2507", "qwen3-instruct-2507": "qwen3_2507", "qwen3.5-nothink": "qwen3.5_nothink",
           "qwen3_8": "qwen3.8",
           "glm4moe": "glm4.5", "glm-4.5": "glm4.5",
           "gptoss": "gpt-oss", "gpt_oss": "gpt-oss", "harmony": "gpt-oss",
           "nemotron3_nano": "nemotron3", "nemotron-3-nano": "nemotron3", "gemma-4": "gemma4",
           "llama-4": "llama4",
           "mistral-v3": "mistral_v3", "mistral_v7": "mistral_v7_tekken", "mistral-v7-tekken": "mistral_v7_tekken",
           "mistral-small-3": "mistral_v7_tekken", "magistral_v13": "magistral",
           "nemotron-3-super": "nemotron3_super", "nemotron-3-ultra": "nemotron3_ultra"}
