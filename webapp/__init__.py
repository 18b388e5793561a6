"""webapp: a Chainlit page to talk to a trained npgpt model, started by `python cli.py serve`.

It lives apart from npgpt's textbook modules (npgpt never imports chainlit):

    settings.py  the page's sampling settings (declared in npgpt.sampling): form -> SamplingSettings
    serve.py     writes Chainlit's config and an offline index page to a temporary app directory,
                 then runs Chainlit on `app.py`
    app.py       the Chainlit callbacks: one chat session = one user's settings and answers;
                 the model is loaded and run through `frontend.py`, as `cli.py generate` does
    access.py    who may use the page: open on loopback, behind a password beyond it
    answer_format.py   how an answer is shown in the chat, and read back out of it
    client.py    a chat session without a browser (Chainlit's socket.io protocol), for
                 scripts and tests: bench/bench_serve.py drives the page with it
"""
