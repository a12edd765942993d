/* presence pages: keep a logged-in user present on the pages without the
 * live script (settings, log in / out, message left, error pages).
 *
 * The live pages (<main id="live">, presence.js) hold the heartbeat
 * themselves; every other page of a logged-in user holds it here, so that
 * the user stays online while they read or change their settings.  Frames
 * this page cannot show (chat, initChat, SIP, messages) are never
 * acknowledged: the user's next live page gets them again, so nothing is
 * lost; a note on the page says someone wrote.  An EventSource that
 * reconnects by itself would acknowledge them with Last-Event-ID, so a
 * dropped connection is opened again as a new one instead.
 *
 * Only one page of a browser holds a session's heartbeat at a time (a new
 * request releases the held one): before connecting this page asks the
 * others ("who") and stays quiet when a page already holds it, and it lets
 * go when a live page takes over.
 */
(function () {
  'use strict';
  if (document.getElementById('live') || !window.EventSource || !window.fetch) return;
  var meEl = document.querySelector('header.top nav .me:not(.guest)');
  if (!meEl || !meEl.textContent) return;
  var me = meEl.textContent;
  var es = null, lastId = 0, ackable = 0, acked = 0, ackTimer = null, held = false;
  var retryTimer = null, answered = false;
  var tabs = window.BroadcastChannel ? new BroadcastChannel('presence-pages') : null;
  var UNSHOWN = {chat: 1, initChat: 1, sipreq: 1, sipresp: 1, message: 1};

  function sendAck() {
    ackTimer = null;
    if (ackable <= acked) return;
    var upto = ackable;
    fetch('/ack', {method: 'POST', credentials: 'same-origin',
                   body: new URLSearchParams({me: me, ack: String(upto)})})
      .then(function (r) { if (r.status === 204 && upto > acked) acked = upto; },
            function () { /* the next ack carries it */ });
  }

  function tell(who) {
    if (document.getElementById('present-note')) return;
    var p = document.createElement('p');
    p.id = 'present-note';
    p.className = 'notice';
    p.setAttribute('role', 'status');
    p.appendChild(document.createTextNode((who || 'Someone') + ' wrote to you: '));
    var a = document.createElement('a');
    a.href = '/home';
    a.textContent = 'answer on your home page';
    p.appendChild(a);
    p.appendChild(document.createTextNode('.'));
    var main = document.querySelector('main');
    if (main) main.insertBefore(p, main.firstChild);
  }

  function close() {
    if (es) { es.close(); es = null; }
    if (retryTimer) { clearTimeout(retryTimer); retryTimer = null; }
  }

  function connect() {
    close();
    var url = '/jchat?me=' + encodeURIComponent(me) + (acked ? '&ack=' + acked : '');
    var source = es = new EventSource(url);
    document.documentElement.setAttribute('data-present', 'connecting');
    source.onopen = function () {
      document.documentElement.setAttribute('data-present', 'live');
    };
    source.onmessage = function (e) {
      if (source !== es) return;
      var id = parseInt(e.lastEventId, 10) || 0;
      if (id && id <= lastId) return;
      if (id) lastId = id;
      var words = e.data.split('\n', 1)[0].split(' ');
      if (words[1] === 'bye') { close(); return; }
      if (UNSHOWN[words[1]]) {
        held = true;  // this and every later frame wait for a live page
        if (words[1] !== 'sipresp') tell(words[2]);
      }
      if (!held && id) {
        ackable = id;
        if (!ackTimer) ackTimer = setTimeout(sendAck, 5000);
      }
    };
    source.onerror = function () {
      if (source !== es) return;
      // never let it reconnect by itself: Last-Event-ID would acknowledge
      // what this page did not show
      close();
      document.documentElement.setAttribute('data-present', 'retrying');
      if (source.readyState === EventSource.CLOSED && !lastId) return;  // refused: 403
      retryTimer = setTimeout(start, 3000);
    };
  }

  function start() {
    if (!tabs) { connect(); return; }
    answered = false;
    tabs.postMessage({type: 'who', me: me});
    setTimeout(function () { if (!answered && !es) connect(); }, 400);
  }

  if (tabs) {
    tabs.onmessage = function (e) {
      var d = e.data || {};
      if (d.me !== me) return;
      if (d.type === 'live' || d.type === 'held') {
        answered = true;
        if (d.type === 'live') close();  // a live page holds it now
      } else if (d.type === 'who' && es) {
        tabs.postMessage({type: 'held', me: me});
      }
    };
  }

  window.addEventListener('pagehide', function () {
    if (ackable > acked && navigator.sendBeacon) {
      navigator.sendBeacon('/ack', new URLSearchParams({me: me, ack: String(ackable)}));
    }
    close();
  });
  window.addEventListener('pageshow', function (e) { if (e.persisted) start(); });
  document.addEventListener('visibilitychange', function () {
    if (!document.hidden && !es) start();
  });

  start();
})();
