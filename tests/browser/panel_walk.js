// panel_walk.js — a person at the support panel, in Debian's chromium driven
// by playwright-core (headless, --no-sandbox). Run by
// tests/integration/test_panel_browser.py, which starts `dunning serve` with
// real data and checks the database afterwards; this script clicks through
// every page and action, checks what a person would see, and keeps a
// screenshot of every page. Its one argument is a JSON file:
//   {base, user, password, artifacts, chromium, drift_account, hostile_id,
//    hostile_name, hostile_email, bad_debt_account, observe_account,
//    dead_trigger, evil_url, kill_reason}
// It exits 0 when every check held, 1 with the first failure otherwise.
"use strict";

const fs = require("fs");
const path = require("path");
const { chromium } = require(path.join(__dirname, "..", "node", "node_modules", "playwright-core"));

const cfg = JSON.parse(fs.readFileSync(process.argv[2], "utf8"));
fs.mkdirSync(cfg.artifacts, { recursive: true });

let shot = 0;
const dialogs = [];
const problems = [];

function check(cond, what) {
  if (!cond) throw new Error("check failed: " + what);
  console.log("ok  " + what);
}

async function snap(page, name) {
  shot += 1;
  const file = path.join(cfg.artifacts, String(shot).padStart(2, "0") + "-" + name + ".png");
  await page.screenshot({ path: file, fullPage: true });
  console.log("shot " + file);
}

async function text(page, sel) {
  return (await page.locator(sel).first().textContent()).trim();
}

async function main() {
  const browser = await chromium.launch({
    executablePath: cfg.chromium,
    headless: true,
    args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
  });
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  const page = await context.newPage();
  page.setDefaultTimeout(20000);
  page.on("dialog", async (d) => {
    dialogs.push(d.message());
    await d.dismiss();
  });
  page.on("pageerror", (e) => problems.push("page error: " + e.message));
  page.on("console", (m) => {
    // A CSP refusal or a script error shows here. An answer with an error status
    // (the refused sign-in and the refused form are meant to be) and a missing
    // favicon do not count.
    if (m.type() === "error" && !/favicon/.test(m.location().url || "") &&
        !/^Failed to load resource: the server responded with a status of/.test(m.text()))
      problems.push("console: " + m.text());
  });

  try {
    // -- signing in --
    await page.goto(cfg.base + "/panel/");
    check(page.url().endsWith("/panel/login"), "not signed in: the panel sends you to sign in");
    await snap(page, "sign-in");
    await page.fill("#name", cfg.user);
    await page.fill("#password", "not the password");
    await page.click("button[type=submit]");
    check((await text(page, "#login-error")).includes("wrong"), "a wrong password is refused");
    await snap(page, "sign-in-refused");
    await page.fill("#name", cfg.user);
    await page.fill("#password", cfg.password);
    await page.click("button[type=submit]");
    check(page.url().endsWith("/panel/"), "signed in, on the search page");
    check((await text(page, "#user")) === cfg.user, "the header names who is signed in");
    const cookies = await context.cookies();
    const session = cookies.find((c) => c.name === "dunning_panel");
    check(session && session.httpOnly && session.sameSite === "Strict",
      "the session cookie is HttpOnly and SameSite=Strict");
    await snap(page, "search");

    // -- a drifting account: found by a scan, seen why, recomputed, gone --
    await page.click("nav >> text=Drift");
    await page.click("#scan");
    const drifting = Number((await text(page, "#scan-drifting")).split(" ")[0]);
    check(drifting >= 1, "the scan finds drifting accounts (" + drifting + ")");
    await snap(page, "drift-scan");
    await page.click("#drift-examples a:text-is('" + cfg.drift_account + "')");
    check((await text(page, "#account-id")) === cfg.drift_account, "the drifting account opens");
    const driftText = await text(page, "#drift");
    check(driftText.includes("stuck_in_bad_debt"), "the account page says why it drifts: " + driftText);
    check((await page.locator("ol.plan li").count()) > 0, "the page shows what a recompute would do");
    await snap(page, "account-drifting");
    await page.click("#recompute");
    check((await page.locator("ol.plan li").count()) > 0, "the dry run shows the plan first");
    check((await text(page, "ol.plan")).includes("bad_debt"), "the plan clears the bad-debt flag");
    await snap(page, "recompute-dry-run");
    await page.click("#apply");
    await page.waitForSelector("#recompute-status.done", { timeout: 30000 });
    check(await page.locator("#drift-none").isVisible(), "after the recompute the drift is gone");
    check(await page.locator("#no-plan").isVisible(), "and nothing is left to do");
    await snap(page, "account-repaired");

    // -- hostile names and ids: shown as text, never run --
    await page.goto(cfg.base + "/panel/");
    await page.fill("#q", cfg.hostile_email);
    await page.click(".search button");
    check((await text(page, "#account-id")) === cfg.hostile_id, "search by email opens the account; its id shows as text");
    check((await text(page, "#account-name")) === cfg.hostile_name, "its name shows as text");
    check((await text(page, "#account-email")) === cfg.hostile_email, "its email shows as text");
    await snap(page, "account-hostile");
    await page.goto(cfg.base + "/panel/search?q=" + encodeURIComponent(cfg.hostile_id.slice(0, 9)));
    check((await page.locator("table a").filter({ hasText: cfg.hostile_id }).count()) === 1,
      "a prefix search lists the hostile account by its id");
    await snap(page, "search-hostile");
    await page.locator("table a").filter({ hasText: cfg.hostile_id }).click();
    await page.fill("#reason", cfg.kill_reason);
    await page.click("#kill-switch");
    check((await text(page, "#account-id")) === cfg.hostile_id, "back on the account after the kill switch");
    check((await page.locator(".badge.kill").count()) === 1, "the kill switch shows as on");
    check((await text(page, "table.actions")).includes(cfg.kill_reason), "the reason is recorded and shown as typed");
    await snap(page, "kill-switch-on");

    // -- pay-bad-debt link --
    await page.goto(cfg.base + "/panel/accounts/" + encodeURIComponent(cfg.bad_debt_account));
    check((await text(page, "#stage")) === "bad_debt", "the bad-debt account is in bad debt");
    await snap(page, "account-bad-debt");
    await page.click("#pay-bad-debt");
    const url = await page.inputValue("#pay-url");
    check(url.startsWith("http"), "the pay-bad-debt link is shown: " + url);
    await snap(page, "pay-bad-debt-link");

    // -- observe mode: the shadow decision --
    await page.goto(cfg.base + "/panel/accounts/" + encodeURIComponent(cfg.observe_account));
    check(await page.locator("#shadow").isVisible(), "an observed account shows its shadow decision");
    await snap(page, "account-observe");

    // -- dead triggers: retry --
    await page.click("nav >> text=Triggers");
    const row = page.locator("#dead-triggers tr", { hasText: "platform unreachable" });
    check((await row.count()) === 1, "the dead trigger is listed with its error");
    await snap(page, "dead-triggers");
    await row.locator("button").click();
    check(page.url().endsWith("/panel/triggers"), "retry returns to the triggers page");
    check((await page.locator("#dead-triggers tr", { hasText: "platform unreachable" }).count()) === 0,
      "the retried trigger is no longer dead");
    await snap(page, "dead-triggers-retried");

    // -- the other pages --
    await page.click("nav >> text=Outboxes");
    check(await page.locator("#outbox-platform").isVisible(), "the outboxes page shows the platform outbox");
    await snap(page, "outboxes");
    await page.click("nav >> text=Rollout");
    check((await text(page, "#rollout-mode")).includes("active"), "the rollout page shows the mode");
    check(await page.locator("#gate").isVisible(), "and the gate");
    await snap(page, "rollout");
    await page.click("nav >> text=Actions");
    const log = await text(page, "table.actions");
    for (const a of ["sign_in", "drift_scan", "recompute", "kill_switch_on", "pay_bad_debt_link", "retry_trigger"])
      check(log.includes(a), "the actions page records " + a);
    await snap(page, "actions");

    // -- a form on another origin posting to the panel: refused --
    await page.goto(cfg.evil_url);
    await page.click("#go");
    await page.waitForLoadState();
    check((await page.content()).includes("Refused"), "a form from another origin is refused");
    await snap(page, "other-origin-refused");

    // -- signing out --
    await page.goto(cfg.base + "/panel/");
    await page.click(".who button");
    check(page.url().endsWith("/panel/login"), "signed out");
    await page.goto(cfg.base + "/panel/actions");
    check(page.url().endsWith("/panel/login"), "after signing out the pages ask to sign in again");

    check(dialogs.length === 0, "no script ran (no dialog opened): " + JSON.stringify(dialogs));
    check(problems.length === 0, "no page error or console error: " + JSON.stringify(problems));
  } catch (e) {
    try {
      await snap(page, "failure");
    } catch (_) {}
    console.error(e.message + "\nat " + page.url());
    await browser.close();
    process.exit(1);
  }
  await browser.close();
}

main().catch((e) => {
  console.error(e.stack || String(e));
  process.exit(1);
});
