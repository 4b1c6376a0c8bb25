from bot.render.terminal import blocks_to_text, mrkdwn_to_text


def test_mrkdwn_to_text() -> None:
    assert mrkdwn_to_text("*Tokens* <@U1|x> &lt;b&gt; <https://a.b|link>", {"U1": "alice"}) == \
        "Tokens @alice <b> link"


def test_blocks_to_text() -> None:
    blocks = [{"type": "header", "text": {"type": "plain_text", "text": "Hi"}},
              {"type": "section", "fields": [{"type": "mrkdwn", "text": "*In*\n5"}]},
              {"type": "actions", "elements": [{"type": "button", "text": {"type": "plain_text",
                                                                            "text": "Go"}}]}]
    assert blocks_to_text(blocks) == "Hi\n==\n  In: 5\n[ Go ]"
