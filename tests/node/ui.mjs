// The live page in headless Chromium (Debian's, driven by playwright-core):
// node ui.mjs GATEWAY_URL ADMIN_KEY SCREENSHOT_PATH
// Logs in with HTTP Basic (the admin key as password), waits for the demo's
// chains, makes the premium model fail until its circuit opens, waits for the
// page to show it open, takes a screenshot; prints what it saw as JSON.
import { chromium } from "playwright-core";

const [url, adminKey, shot] = process.argv.slice(2);
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
try {
  const context = await browser.newContext({
    httpCredentials: { username: "admin", password: adminKey },
    viewport: { width: 1280, height: 960 },
  });
  const page = await context.newPage();
  const errors = [];
  page.on("pageerror", (e) => errors.push(String(e)));
  const resp = await page.goto(url + "/ui");
  await page.waitForSelector('body[data-loaded="true"]', { timeout: 15000 });
  const tiers = await page.$$eval("[data-chain] .tier", (els) => [...new Set(els.map((e) => e.dataset.tier))]);
  const before = await page.getAttribute('[data-model="premium-large"]', "data-circuit");

  // the premium model fails every call: its circuit opens
  for (let i = 0; i < 4; i++) {
    await fetch(url + "/v1/chat/completions", {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ model: "plan", messages: [{ role: "user", content: "hello from the browser test" }] }),
    });
  }
  await page.waitForSelector('[data-model="premium-large"][data-circuit="open"]', { timeout: 15000 });
  await page.waitForSelector("#request-table tr:nth-child(5)", { timeout: 15000 });
  const requests = await page.$$eval("#request-table tr", (rows) => rows.length - 1);
  const budgets = await page.textContent("#budgets");
  const text = await page.textContent("body");
  await page.screenshot({ path: shot, fullPage: true });
  console.log(JSON.stringify({ status: resp.status(), tiers, before, requests, errors, budgets,
    promptShown: text.includes("hello from the browser test") }));
} finally {
  await browser.close();
}
