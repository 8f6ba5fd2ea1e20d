"""The schemathesis CLI, as `python tests/st_cli.py run …`.

One work-around: to name a filter lambda, hypothesis parses the source file it
comes from, and CPython 3.11 up to 3.11.7 can fail on that with "SystemError: AST
constructor recursion depth mismatch" (a CPython bug). The name is only for
messages, so a failure there is given a plain name instead of ending the run.
"""
import hypothesis.internal.lambda_sources as lambda_sources

_describe = lambda_sources.lambda_description


def _safe_description(f) -> str:
    try:
        return _describe(f)
    except SystemError:
        return "lambda"


lambda_sources.lambda_description = _safe_description

if __name__ == "__main__":
    import schemathesis.cli

    schemathesis.cli.schemathesis()
