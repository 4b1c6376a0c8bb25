"""LiteLLM proxy integration: `bot_litellm.hook.handler` asks the bot before each call."""
