#!/usr/bin/env python3
"""The live cluster view in a real headless Chromium, driven over WebDriver.

Starts `raftkv dev` with 5 nodes, opens its page and checks what a visitor sees:
  1. five nodes, every one answering, and exactly one leader;
  2. after "Kill" on the leader's card: another node leads, in a higher term;
  3. after "Restart" on the killed node and a put from the page's form: the put's
     log entry appears in every node's log;
  4. after "Partition" on the leader: another node leads, in a higher term; after
     "Heal": the old leader follows again.
Screenshots of these states go to ARTIFACTS (default: artifacts/view).

    python3 scripts/browser-test.py [RAFTKV_BINARY]

Needs Debian's chromium and chromium-driver, and selenium (PyPI); .ci/run installs
them. Exits non-zero, saying what it saw, if anything is not as expected.
"""
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By

BASE_PORT = int(os.environ.get("VIEW_TEST_BASE_PORT", "7600"))
VIEW = f"http://127.0.0.1:{BASE_PORT + 400}/"
ARTIFACTS = os.environ.get("ARTIFACTS", "artifacts/view")
# Generous: a shared CI machine may be slow; each wait ends as soon as it holds.
DEADLINE = 30.0


def log(msg):
    print(f"browser-test: {msg}", flush=True)


def wait_for(what, check, deadline=DEADLINE):
    """Polls check() until it returns something truthy; fails with what it last saw."""
    end = time.monotonic() + deadline
    last = None
    while time.monotonic() < end:
        try:
            last = check()
            if last:
                return last
        except Exception as e:  # a card redrawn while read: look again
            last = e
        time.sleep(0.2)
    raise AssertionError(f"timed out after {deadline:.0f} s waiting for {what}; last saw: {last!r}")


def click(driver, name, action):
    """Clicks the button `action` on the card of node `name` (looked up afresh: cards
    are redrawn as the cluster changes)."""
    def once():
        for c in driver.find_elements(By.CSS_SELECTOR, "#nodes .node"):
            if c.get_attribute("data-name") == name:
                c.find_element(By.CSS_SELECTOR, f'button[data-action="{action}"]').click()
                return True
        return False
    wait_for(f"the {action} button of {name} to be clicked", once)


def cards(driver):
    """Every node card as the page shows it."""
    return [
        {
            "name": c.get_attribute("data-name"),
            "up": c.get_attribute("data-up") == "true",
            "role": c.get_attribute("data-role"),
            "term": int(c.get_attribute("data-term") or 0),
            "el": c,
        }
        for c in driver.find_elements(By.CSS_SELECTOR, "#nodes .node")
    ]


def shown(driver):
    return [(c["name"], c["role"], c["term"]) for c in cards(driver)]


def main():
    binary = sys.argv[1] if len(sys.argv) > 1 else "target/debug/raftkv"
    os.makedirs(ARTIFACTS, exist_ok=True)
    data = tempfile.mkdtemp(prefix="raftkv-view-test.")
    dev_log = open(os.path.join(ARTIFACTS, "dev.log"), "w")
    log(f"starting {binary} dev --nodes 5 --base-port {BASE_PORT}")
    dev = subprocess.Popen(
        [binary, "dev", "--nodes", "5", "--base-port", str(BASE_PORT), "--fresh", "--data-root", data],
        stdout=dev_log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    opts = webdriver.ChromeOptions()
    opts.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    for a in ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1400,1300"]:
        opts.add_argument(a)
    service = Service(executable_path=shutil.which("chromedriver") or "/usr/bin/chromedriver")
    driver = None
    try:
        driver = webdriver.Chrome(options=opts, service=service)
        wait_for("the page to load", lambda: driver.get(VIEW) or driver.find_elements(By.ID, "nodes"))

        # 1. Five nodes, all answering, exactly one leader.
        def one_leader():
            cs = cards(driver)
            leaders = [c for c in cs if c["role"] == "leader"]
            return len(cs) == 5 and all(c["up"] for c in cs) and len(leaders) == 1 and leaders[0]
        leader = wait_for("5 nodes answering and one leader", one_leader)
        old_name, old_term = leader["name"], leader["term"]
        log(f"5 nodes, leader {old_name} in term {old_term}: {shown(driver)}")
        driver.save_screenshot(os.path.join(ARTIFACTS, "1-cluster.png"))

        # 2. Kill the leader from its card: a new leader in a higher term.
        click(driver, old_name, "kill")
        t0 = time.monotonic()

        def new_leader():
            cs = cards(driver)
            leaders = [c for c in cs if c["role"] == "leader"]
            killed = [c for c in cs if c["name"] == old_name]
            ok = (len(leaders) == 1 and leaders[0]["name"] != old_name and leaders[0]["term"] > old_term
                  and killed and not killed[0]["up"])
            return ok and leaders[0]
        leader = wait_for(f"a new leader after killing {old_name}", new_leader)
        log(f"killed {old_name}: {leader['name']} leads term {leader['term']} "
            f"(seen {time.monotonic() - t0:.1f} s after the click)")
        driver.save_screenshot(os.path.join(ARTIFACTS, "2-new-leader.png"))

        # 3. Restart it, put from the form: the entry reaches every node's log.
        def killed_card():
            return next(c for c in cards(driver) if c["name"] == old_name)
        click(driver, old_name, "restart")
        wait_for(f"{old_name} to answer again", lambda: killed_card()["up"])
        driver.find_element(By.ID, "put-key").clear()
        driver.find_element(By.ID, "put-key").send_keys("browser-test")
        driver.find_element(By.ID, "put-value").clear()
        driver.find_element(By.ID, "put-value").send_keys("it works")
        driver.find_element(By.ID, "put-btn").click()
        result = driver.find_element(By.ID, "put-result")
        index = wait_for("the put's answer", lambda: result.get_attribute("data-index")
                         or ("failed" in (result.get_attribute("class") or "") and result.text) or None)
        if not index.isdigit():
            raise AssertionError(f"the put failed: {index}")
        log(f"put answered: {result.text}")

        def in_every_log():
            holding = [c["name"] for c in cards(driver)
                       if c["el"].find_elements(By.CSS_SELECTOR, f'.cell[data-index="{index}"][data-committed="true"]')]
            return len(holding) == 5 and holding
        holders = wait_for(f"entry {index} committed in all 5 logs", in_every_log)
        log(f"entry {index} is in the logs of {', '.join(holders)}")
        driver.save_screenshot(os.path.join(ARTIFACTS, "3-put.png"))

        # 4. Partition the leader away: the others elect a leader in a higher term; heal,
        # and the old leader follows it.
        leader = wait_for("one leader", one_leader)
        cut, cut_term = leader["name"], leader["term"]
        click(driver, cut, "isolate")

        def leader_without_cut():
            cs = cards(driver)
            others = [c for c in cs if c["name"] != cut and c["role"] == "leader" and c["term"] > cut_term]
            isolated = [c for c in cs if c["name"] == cut and c["el"].get_attribute("data-process") == "isolated"]
            return len(others) == 1 and isolated and others[0]
        leader = wait_for(f"a leader other than {cut}, cut off", leader_without_cut)
        log(f"partitioned {cut} away: {leader['name']} leads term {leader['term']}")
        driver.save_screenshot(os.path.join(ARTIFACTS, "4-partition.png"))
        click(driver, cut, "heal")

        def rejoined():
            c = next(c for c in cards(driver) if c["name"] == cut)
            return c["up"] and c["role"] == "follower" and c["term"] >= leader["term"] and c
        wait_for(f"{cut} to follow again after the heal", rejoined)
        log(f"healed: {cut} follows again: {shown(driver)}")
        events = driver.find_element(By.ID, "events").text
        if "leader of term" not in events:
            raise AssertionError(f"the event strip tells no election: {events!r}")
        log(f"PASSED; screenshots in {ARTIFACTS}/")
    except Exception:
        if driver is not None:
            driver.save_screenshot(os.path.join(ARTIFACTS, "failed.png"))
            log(f"cards at failure: {shown(driver)}")
        raise
    finally:
        if driver is not None:
            driver.quit()
        try:
            os.killpg(dev.pid, signal.SIGTERM)
            dev.wait(timeout=15)
        except ProcessLookupError:
            pass  # dev had exited already (its log in ARTIFACTS says why)
        except subprocess.TimeoutExpired:
            os.killpg(dev.pid, signal.SIGKILL)
            dev.wait()
        dev_log.close()
        shutil.rmtree(data, ignore_errors=True)


if __name__ == "__main__":
    main()
