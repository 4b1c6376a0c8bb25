"""The offline demo (`make demo`, `bedrock-bot demo`) and its printing Slack stand-in.

A product feature, not a handler: it drives the real server with signed requests against
moto and the local AIP registry. Like handlers/ and jobs/, it may import bot/, never the
other way round.
"""
