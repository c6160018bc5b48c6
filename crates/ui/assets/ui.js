// Tillsync UI: the few behaviours that need script. Everything else works
// as plain forms; htmx (loaded separately) makes the cart and "Sync now"
// quicker and keeps the sync indicator live.
"use strict";
document.addEventListener("click", function (e) {
  var t = e.target.closest("[data-print]");
  if (t) {
    window.print();
  }
});
