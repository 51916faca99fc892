"use strict";
// The review page, built from /api/photos with textContent, attributes and form values only (never innerHTML),
// so that every text, an alt text holding markup included, is shown as text and never run.

const STATUS = {unreviewed: "unreviewed", accepted: "accepted", edited: "edited", rejected: "rejected"};
const ACTIONS = [["accepted", "Accept"], ["edited", "Save edit"], ["rejected", "Reject"]];
let photos = [];
let filter = "all";

function element(tag, attributes = {}, text = undefined) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) node.setAttribute(name, String(value));
  if (text !== undefined) node.textContent = text;
  return node;
}

function announce(message) {
  document.getElementById("announcer").textContent = message;
}

async function load() {
  const response = await fetch("api/photos", {credentials: "same-origin"});
  if (!response.ok) {
    document.getElementById("progress").textContent = `The photos could not be loaded (${response.status}).`;
    return;
  }
  const data = await response.json();
  photos = data.photos;
  render();
  showSummary(data.summary);
}

function shown() {
  return photos.map((photo, index) => ({photo, index})).filter(({photo}) => filter === "all" || photo.status === filter);
}

function render() {
  const visible = shown();
  document.getElementById("photos").replaceChildren(...visible.map(({photo, index}) => item(photo, index)));
  document.getElementById("empty").hidden = visible.length > 0;
  const reviewed = photos.filter((photo) => photo.status !== "unreviewed").length;
  document.getElementById("progress").textContent = `${reviewed} of ${photos.length} reviewed`;
  const bar = document.getElementById("progress-bar");
  bar.max = Math.max(photos.length, 1);
  bar.value = reviewed;
  for (const count of document.querySelectorAll("[data-count]")) {
    const status = count.dataset.count;
    count.textContent = `(${photos.filter((photo) => status === "all" || photo.status === status).length})`;
  }
}

function item(photo, index) {
  const li = element("li", {class: "photo", "data-status": photo.status, "data-name": photo.name});
  const heading = element("h3", {id: `name-${index}`}, photo.name);
  const source = "photos/" + photo.name.split("/").map(encodeURIComponent).join("/");
  const text = photo.text ?? photo.generated;
  const image = element("img", {src: source, alt: text, width: photo.width, height: photo.height});
  const status = element("p", {class: "status", id: `status-${index}`}, "Status: ");
  status.append(element("strong", {}, STATUS[photo.status]));
  if (photo.note) status.append(element("span", {class: "note"}, ` (${photo.note})`));
  const label = element("label", {for: `text-${index}`}, "Alt text");
  const field = element("textarea", {id: `text-${index}`, rows: 3, "aria-describedby": `meta-${index} status-${index}`});
  field.value = text;
  const meta = element("p", {class: "meta", id: `meta-${index}`});
  const describe = () => {
    meta.textContent = `${field.value.length} characters. Written by ${photo.model || "an unnamed model"}` +
      (photo.status === "edited" ? `; the model wrote: ${photo.generated}` : ".");
  };
  describe();
  field.addEventListener("input", describe);
  field.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
      event.preventDefault();
      decide(index, "edited", field.value);
    }
  });
  const actions = element("div", {class: "actions", role: "group", "aria-labelledby": `name-${index}`});
  for (const [decision, name] of ACTIONS) {
    const button = element("button", {type: "button", "data-decision": decision}, name);
    button.addEventListener("click", () => decide(index, decision, decision === "edited" ? field.value : null));
    actions.append(button);
  }
  li.append(heading, image, status, label, field, meta, actions);
  return li;
}

function showSummary(summary) {
  const rows = Object.entries(summary.models).map(([model, figures]) => {
    const row = element("tr");
    const share = (count, rate) => `${figures[count]} (${Math.round(figures[rate] * 100)}%)`;
    const cells = [model || "an unnamed model", figures.reviewed, share("accepted", "accept_rate"),
      share("edited", "edit_rate"), share("rejected", "reject_rate"), figures.mean_edit_distance ?? "none"];
    cells.forEach((value, column) => row.append(element(column ? "td" : "th", column ? {} : {scope: "row"}, value)));
    return row;
  });
  if (!rows.length) {
    const row = element("tr");
    row.append(element("td", {colspan: 6}, "No decision yet."));
    rows.push(row);
  }
  document.querySelector("#summary tbody").replaceChildren(...rows);
}

async function decide(index, decision, text) {
  const photo = photos[index];
  let response, answer;
  try {
    response = await fetch("api/decisions", {
      method: "POST", credentials: "same-origin", headers: {"Content-Type": "application/json"},
      body: JSON.stringify({name: photo.name, sha256: photo.sha256, decision, text}),
    });
    answer = await response.json();
  } catch (error) {
    announce(`Not saved (${error.message}): the text is still in the field; try again.`);
    return;
  }
  if (!response.ok) {
    announce(`Not saved: ${answer.detail ?? response.status}. The text is still in the field.`);
    return;
  }
  photos[index] = answer.photo;
  render();
  showSummary(answer.summary);
  const reviewed = document.getElementById("progress").textContent;
  announce(`${photo.name}: ${STATUS[answer.photo.status]}. ${reviewed}.`);
  focusAfter(index);
}

// The next photo shown after the one just decided (or the first), so that a review goes on from the keyboard.
function focusAfter(index) {
  const visible = shown();
  const next = visible.find((entry) => entry.index > index) ?? visible[0];
  const target = next ? document.getElementById(`text-${next.index}`) : document.getElementById("photos-heading");
  target.focus();
}

document.addEventListener("DOMContentLoaded", () => {
  for (const radio of document.querySelectorAll("input[name=filter]")) {
    radio.addEventListener("change", () => {
      filter = radio.value;
      render();
    });
  }
  load();
});
