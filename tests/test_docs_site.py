"""The documentation site, built strictly and opened in a real headless browser.

The module fixture builds the site with ``mkdocs build --strict`` into a temporary folder in a subprocess
(without the benchmark scripts' flag pages; the interpreter running the tests must have the ``docs`` extra,
which ``make`` installs), serves it with
``python -m http.server`` on a free localhost port and opens it with Selenium and Debian's headless Chromium
(``/usr/bin/chromium``, ``/usr/bin/chromedriver``; ``make test`` installs them through ``make browser`` where they
are missing). Each test loads one page, checks what it must show and that the browser logged no SEVERE entry
(a failed request, a script error). A missing browser or package fails, naming what to install: a documentation
site that CI cannot open is a failure, not a skip.
"""
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"


def _require_tools():
    """Fail (not skip) with the command that installs what the test needs."""
    missing = [path for path in (CHROMIUM, CHROMEDRIVER) if not os.access(path, os.X_OK)]
    if missing:
        pytest.fail("the documentation site test needs Chromium and its driver (%s missing): run `make browser` as "
                    "root, or `apt-get install -y chromium chromium-driver`" % ", ".join(missing), pytrace=False)
    for module in ("mkdocs", "selenium"):
        if subprocess.run([sys.executable, "-c", "import " + module], capture_output=True).returncode:
            pytest.fail("the documentation site test needs the Python package %r in %s: install the docs extra "
                        "(`%s -m pip install -e '.[docs]'`, which `make install` does)"
                        % (module, sys.executable, sys.executable), pytrace=False)


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """The base URL of the site, built strictly into a temporary folder and served on localhost."""
    _require_tools()
    site_dir = tmp_path_factory.mktemp("site")
    # The benchmark scripts' flag pages are left out here (three of those scripts import TensorFlow when
    # imported: half the build's time); `make docs` in .ci/run builds the whole site strictly.
    env = dict(os.environ, DISABLE_MKDOCS_2_WARNING="true", NO_MKDOCS_2_WARNING="1", GSMORPH_DOCS_FLAGS="entry_points")
    build = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--quiet",
                            "--config-file", str(ROOT / "mkdocs.yml"), "--site-dir", str(site_dir)],
                           cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, "mkdocs build --strict failed:\n" + build.stdout[-3000:] + build.stderr[-5000:]
    # Port 0: the server picks a free port and prints it ("Serving HTTP on 127.0.0.1 port N ...").
    server = subprocess.Popen([sys.executable, "-u", "-m", "http.server", "0", "--bind", "127.0.0.1",
                               "--directory", str(site_dir)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                              text=True)
    try:
        line = server.stdout.readline()
        assert "port" in line, "http.server did not start: %r" % line
        port = int(line.split(" port ")[1].split()[0])
        yield "http://127.0.0.1:%d/" % port
    finally:
        server.terminate()
        server.wait(timeout=10)


@pytest.fixture(scope="module")
def browser(site):
    """A headless Chromium that records its console log."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                     "--window-size=1280,900"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def open_page(browser, site, path):
    """Load ``path`` of the site; return the page's visible text. Asserts no SEVERE console entry."""
    browser.get_log("browser")  # drop what earlier pages logged
    browser.get(site + path)
    text = browser.find_element("tag name", "body").text
    severe = [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]
    assert not severe, "console errors on %s: %s" % (path, severe)
    return text


def test_home_page(browser, site):
    text = open_page(browser, site, "")
    assert "gsmorph-tf" in browser.title
    assert "GSMorph" in text and "ULAE-net" in text
    links = {a.get_attribute("href") for a in browser.find_elements("css selector", "nav a")}
    assert site + "getting-started/" in links and site + "how-to/cardiac-2d/" in links


def test_how_to_page(browser, site):
    text = open_page(browser, site, "how-to/cardiac-2d/")
    headings = [h.text for h in browser.find_elements("css selector", "article h2")]
    assert "Training on ACDC" in headings and "Tracking motion through a cine" in headings
    assert "run_train.py --flagfile=flags/acdc.flags --data_dir=/path/to/ACDC" in text


def test_figure_loads(browser, site):
    open_page(browser, site, "results/lambda-study/")
    image = browser.find_element("css selector", "article img[src$='dice_vs_njd.png']")
    width = browser.execute_script("return arguments[0].complete && arguments[0].naturalWidth;", image)
    assert width > 0, "the lambda study's figure did not load: %s" % image.get_attribute("src")
    assert "79.97 +- 0.91" in browser.find_element("css selector", "article").text


def test_api_page_from_docstrings(browser, site):
    text = open_page(browser, site, "api/gsmorph_tf/core/surgery/")
    headings = [h.get_attribute("id") for h in browser.find_elements("css selector", "article h2")]
    assert "gsmorph_tf.core.surgery.project_gradients" in headings
    assert "Combine similarity and regularisation gradients by the chosen surgery mode." in text


def test_flag_page_from_absl_definitions(browser, site):
    text = open_page(browser, site, "flags/run_train/")
    assert "--surgery" in text and "layerwise" in text and "--early_stopping_patience" in text
