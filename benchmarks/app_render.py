"""Time the first render of each dashboard page with warm caches, and report the process memory.

Usage: python benchmarks/app_render.py --data ../shared/femnist --cache cache

The cache must already hold the clusterings (`python -m engine cluster --umap`) so that only the
render is timed. Each page is rendered twice in one Streamlit AppTest process: the first run loads
the Studio into st.cache_resource, the second shows what a user waits for when switching pages.
Memory is the peak resident set size of this process (Linux ru_maxrss).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import time
from pathlib import Path

from streamlit.testing.v1 import AppTest

PAGES = ("writers", "clusters", "train", "compare")
APP = str(Path(__file__).resolve().parents[1] / "streamlit_app.py")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="FEMNIST data folder")
    parser.add_argument("--cache", required=True, help="warm cache folder")
    args = parser.parse_args()
    os.environ.update({"FEMNIST_DATA": args.data, "FEMNIST_CACHE": args.cache, "FEMNIST_DEVICE": "cpu"})

    app = AppTest.from_file(APP, default_timeout=600)
    started = time.perf_counter()
    app.run()
    print(json.dumps({"figure": "app start (Writers page, Studio loaded)", "seconds": round(time.perf_counter() - started, 2)}))
    for page in PAGES:
        for attempt in ("first", "again"):
            started = time.perf_counter()
            app.switch_page(f"app_pages/{page}.py").run()
            elapsed = time.perf_counter() - started
            errors = [str(exception.value) for exception in app.exception]
            headers = [element.value for element in app.header] + [element.value for element in app.title]
            print(json.dumps({"figure": f"{page} render ({attempt})", "seconds": round(elapsed, 2),
                              "headers": headers[:2], "exceptions": errors}))
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"figure": "peak resident memory", "MiB": round(peak_mib)}))


if __name__ == "__main__":
    main()
