/* presence pages: live rows, chat boxes, messages.  No framework, no build.
 *
 * A live page (<main id="live" data-live="call|home" data-name=... data-me=...>)
 *   1. makes sure the visitor has a session: a guest session (POST /api/guest)
 *      when nobody is logged in; the session travels in the presence_session
 *      cookie, never in the page;
 *   2. POST /call/live (or /home/live): the session now watches this user or
 *      group, and the answer is the current rows (HTML made by the server);
 *   3. holds the heartbeat with EventSource on /jchat?bundle=1: "msg update"
 *      and each line of a bundled "msg updates" change a row in place, "msg
 *      refresh" repeats step 2, chat frames open chat boxes;
 *   4. acknowledges frames with POST /ack every 100 frames and within 5 s, and
 *      with a beacon when the page goes away.  EventSource resumes by itself
 *      with Last-Event-ID after a dropped connection;
 *   5. when a logged-in user's session is gone (403: it expired, or the server
 *      restarted), POST /api/resume gets a new one without the password: the
 *      resume token is in an HttpOnly cookie sent to /api/resume only, so this
 *      script never sees it (docs/pages.md, "Resuming a session").
 * All text from the server or other people goes into the page as textContent.
 */
(function () {
  'use strict';

  function localTimes(root) {
    var list = (root || document).querySelectorAll('time[datetime]');
    for (var i = 0; i < list.length; i++) {
      var t = list[i], d = new Date(t.getAttribute('datetime'));
      if (!isNaN(d.getTime())) {
        t.title = t.textContent;
        t.textContent = d.toLocaleString([], {dateStyle: 'medium', timeStyle: 'short'});
      }
    }
  }
  localTimes();

  var main = document.getElementById('live');
  if (!main || !window.fetch || !window.EventSource) return;

  var cfg = {
    mode: main.getAttribute('data-live'),
    name: main.getAttribute('data-name'),
    me: main.getAttribute('data-me') || '',
    guest: main.getAttribute('data-guest') === '1'
  };
  var rowsEl = document.getElementById('rows');
  var statusEl = document.getElementById('status');
  var chatsEl = document.getElementById('chats');
  var es = null, lastId = 0, ackedId = 0, ackTimer = null, lastSeq = 0;
  var syncTimer = null, pollTimer = null, paused = false, ended = false, leaving = false;
  var restarts = [];
  var seenChats = {};
  var pageId = Math.random().toString(36).slice(2);
  var tabs = window.BroadcastChannel ? new BroadcastChannel('presence-pages') : null;

  // -- small helpers ------------------------------------------------------------

  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = text;
    return e;
  }

  function status(text, state, action) {
    statusEl.textContent = text;
    statusEl.setAttribute('data-state', state || '');
    if (action) {
      statusEl.appendChild(document.createTextNode(' '));
      statusEl.appendChild(action);
    }
  }

  function notify(text, state) {
    var n = document.getElementById('notice');
    if (!n) {
      n = el('p', 'notice');
      n.id = 'notice';
      n.setAttribute('role', 'status');
      statusEl.parentNode.insertBefore(n, statusEl.nextSibling);
    }
    n.className = 'notice ' + (state || 'ok');
    n.textContent = text;
  }

  function post(url, data) {
    return fetch(url, {method: 'POST', credentials: 'same-origin',
                       body: new URLSearchParams(data || {})});
  }

  function errorText(resp) {
    return resp.text().then(function (t) {
      try {
        var j = JSON.parse(t);
        if (j && j.error) return j.error;
      } catch (e) { /* not JSON */ }
      return t || ('HTTP ' + resp.status);
    });
  }

  function findRow(user) {
    var rows = rowsEl.querySelectorAll('li.row');
    for (var i = 0; i < rows.length; i++) {
      if (rows[i].getAttribute('data-user') === user) return rows[i];
    }
    return null;
  }

  function button(text, onclick) {
    var b = el('button', 'link', text);
    b.type = 'button';
    b.addEventListener('click', onclick);
    return b;
  }

  function link(text, href) {
    var a = el('a', '', text);
    a.href = href;
    return a;
  }

  // -- the session ------------------------------------------------------------------

  function showName() {
    var nav = document.querySelector('header.top nav');
    if (!nav) return;
    var span = nav.querySelector('.me');
    if (!span) {
      span = el('span', 'me');
      nav.appendChild(span);
    }
    span.textContent = cfg.me;
    if (cfg.guest) {
      span.className = 'me guest';
      span.title = 'your guest name';
    }
  }

  function ensureSession() {
    if (cfg.me) return Promise.resolve(true);
    return post('/api/guest').then(function (r) {
      if (r.status === 200) {
        return r.json().then(function (j) {
          adopt(j.username);
          return true;
        });
      }
      return errorText(r).then(function (t) {
        status('No guest session (' + t + '): the page refreshes itself, but you cannot chat.',
               'warn');
        return false;
      });
    }, function () {
      status('The server cannot be reached.', 'error');
      return false;
    });
  }

  function adopt(name) {
    // frame ids count per session: a new session starts again from 1
    cfg.me = name;
    cfg.guest = name.indexOf('guest.') === 0;
    lastId = 0; ackedId = 0;
    reported = 'available'; reportedText = '';  // a new session starts available
    main.setAttribute('data-me', name);
    showName();
  }

  function tooOften() {
    var now = Date.now();
    restarts = restarts.filter(function (t) { return now - t < 60000; });
    if (restarts.length >= 5) return true;
    restarts.push(now);
    return false;
  }

  // The heartbeat was refused (403) or failed for good: find out whether the
  // session is really gone, or the cookie names another one now (another
  // page of this browser started a session).
  function recover() {
    if (leaving || ended) return;
    if (es) { es.close(); es = null; }
    if (tooOften()) { gone('ended'); return; }
    status('Reconnecting…', 'warn');
    fetch('/api/session', {credentials: 'same-origin'}).then(function (r) {
      if (r.status === 200) {
        return r.json().then(function (j) {
          if (j.user === cfg.me) { resume(); return; }
          if (cfg.mode === 'home' || !cfg.guest && j.user.indexOf('guest.') !== 0) {
            gone('other');  // a home page belongs to one user
            return;
          }
          adopt(j.user);
          resume();
        });
      }
      if (r.status === 403) { resumeSession(); return; }
      setTimeout(recover, 3000);
    }, function () { setTimeout(recover, 3000); });
  }

  // The session is gone but the user never logged out: get a new one with
  // the resume token this browser holds in its presence_resume cookie.
  function resumeSession() {
    if (cfg.guest || !cfg.me) { gone('expired'); return; }
    post('/api/resume').then(function (r) {
      if (r.status === 200) {
        return r.json().then(function (j) {
          if (j.username !== cfg.me) { gone('other'); return; }
          adopt(j.username);  // a new session: frame ids start again
          status('Your session was renewed.', 'live');
          resume();
        });
      }
      if (r.status === 401 || r.status === 400) { gone('expired'); return; }
      setTimeout(recover, 3000);  // 429, 5xx: try again later
    }, function () { setTimeout(recover, 3000); });
  }

  // The session ended (msg bye, or it expired): a guest gets a new one.
  function gone(reason) {
    if (leaving) return;
    if (es) { es.close(); es = null; }
    lastId = 0; ackedId = 0;
    if (cfg.guest && cfg.mode === 'call' && reason !== 'other' && !tooOften()) {
      cfg.me = '';
      status('Your guest session ended: starting a new one…', 'warn');
      start();
      return;
    }
    ended = true;
    if (calls) calls.sessionEnded();
    var words = reason === 'logout' ? 'You logged out.'
      : reason === 'replaced' ? 'This session was replaced by a newer login.'
      : reason === 'password' ? 'Your password was changed: log in with the new one.'
      : reason === 'other' ? 'This browser is logged in as someone else now.'
      : 'Your session has ended.';
    status(words, 'error', link('Log in again', '/login?next=' +
      encodeURIComponent(location.pathname + location.search)));
    var inputs = chatsEl.querySelectorAll('input, button[type=submit]');
    for (var i = 0; i < inputs.length; i++) inputs[i].disabled = true;
  }

  // -- rows -----------------------------------------------------------------------

  function sync() {
    var url = cfg.mode === 'home' ? '/home/live' : '/call/live';
    return post(url, {name: cfg.name}).then(function (r) {
      if (r.status === 200) {
        return r.text().then(function (html) {
          rowsEl.innerHTML = html;  // made and escaped by the server
          return true;
        });
      }
      if (r.status === 401) { location.reload(); return false; }
      if (r.status === 403) { recover(); return false; }
      return errorText(r).then(function (t) { status(t, 'error'); return false; });
    }, function () { return false; });
  }

  // a "msg updates" of at most this many members reads the rows again (for
  // the status texts, which bundles do not carry)
  var BUNDLE_RESYNC = 20;

  function scheduleSync() {
    if (syncTimer) return;
    syncTimer = setTimeout(function () { syncTimer = null; sync(); }, 50);
  }

  // state: the word of msg update (online, away, busy, offline); text: the
  // status text (the frame's second line), shown as text
  function setPresence(user, state, text) {
    var row = findRow(user);
    if (!row) return;
    var online = state !== 'offline';
    var before = row.getAttribute('data-presence');
    row.setAttribute('data-presence', state);
    var word = row.querySelector('.state');
    if (word) word.textContent = state;
    var said = row.querySelector('.status-text');
    // text undefined (a line of "msg updates", which carries none): kept
    if (said && (text !== undefined || !online)) said.textContent = online ? text || '' : '';
    if ((before !== 'offline') === online) return;  // away, busy: options stay
    var live = online && user !== cfg.me;
    var chat = row.querySelector('[data-action=chat]');
    if (chat) chat.disabled = !live;
    var call = row.querySelector('[data-action=call]');
    if (call) {
      if (live) {
        call.setAttribute('href', call.getAttribute('data-href'));
        call.removeAttribute('aria-disabled');
      } else {
        call.removeAttribute('href');
        call.setAttribute('aria-disabled', 'true');
      }
    }
    var box = findBox(user);
    if (box) note(box, online ? user + ' is online.'
                              : user + ' went offline: what you write goes to their message box.');
  }

  rowsEl.addEventListener('click', function (e) {
    var target = e.target.closest ? e.target.closest('[data-action]') : null;
    if (!target || !rowsEl.contains(target)) return;
    var action = target.getAttribute('data-action');
    var peer = target.getAttribute('data-peer');
    if (action === 'chat') {
      e.preventDefault();
      startChat(peer);
    } else if (action === 'call' && !target.getAttribute('href')) {
      e.preventDefault();
    } else if (action === 'call' && calls) {
      // a browser call (static/calls.js); without WebRTC the sip: link stays
      e.preventDefault();
      var row = target.closest('li.row');
      calls.start(peer || (row && row.getAttribute('data-user')));
    } else if (action === 'text') {
      e.preventDefault();
      textHandset(peer);
    } else if (action === 'message' && target.getAttribute('href') === '#message') {
      var text = document.getElementById('f-text');
      if (text) setTimeout(function () { text.focus(); }, 0);
    }
  });

  // -- the heartbeat ----------------------------------------------------------------

  function connect() {
    if (es) es.close();
    paused = false;
    var opened = false;
    // bundle=1: the group's presence changes come as one "msg updates" frame
    // per window of the server's --presence-batch (a storm stays one frame)
    var url = '/jchat?me=' + encodeURIComponent(cfg.me) + '&bundle=1' +
        (lastId ? '&ack=' + lastId : '');
    var source = es = new EventSource(url);
    source.onopen = function () {
      status('Live: this page updates by itself.', 'live');
      if (opened) sync();  // a reconnection: say again what this page watches
      opened = true;
      reportState(true);
      if (tabs) tabs.postMessage({type: 'live', me: cfg.me, page: pageId});
    };
    source.onmessage = function (e) {
      if (source !== es) return;
      var id = parseInt(e.lastEventId, 10);
      if (id && id <= lastId) return;  // a frame sent again: seen already
      if (id) lastId = id;
      handle(e.data);
      scheduleAck();
    };
    source.onerror = function () {
      if (source !== es) return;
      if (leaving) return;
      if (source.readyState === EventSource.CLOSED) {  // refused: 403
        recover();
      } else if (document.hidden) {
        pause('Paused while the page is hidden.');
      } else {
        status('Connection lost: reconnecting…', 'warn');
      }
    };
  }

  function pause(why) {
    if (es) { es.close(); es = null; }
    paused = true;
    sendAck();
    status(why, 'paused', button('Resume live updates', resume));
  }

  function resume() {
    if (ended) return;
    status('Connecting…', '');
    sync().then(function (ok) { if (ok !== false && !ended) connect(); });
  }

  if (tabs) {
    tabs.onmessage = function (e) {
      var d = e.data || {};
      if (d.type === 'live' && d.me === cfg.me && d.page !== pageId && es) {
        pause('Paused: another page of this browser holds your session now.');
      }
      // a page without the live script asks before it holds the heartbeat
      // (static/present.js): this one holds it
      if (d.type === 'who' && d.me === cfg.me && es) {
        tabs.postMessage({type: 'live', me: cfg.me, page: pageId});
      }
    };
  }

  document.addEventListener('visibilitychange', function () {
    if (!document.hidden && paused && !ended) resume();
  });
  window.addEventListener('pageshow', function (e) {
    leaving = false;
    if (e.persisted && !ended) resume();  // back from the back-forward cache
  });

  function scheduleAck() {
    if (lastId - ackedId >= 100) sendAck();
    else if (!ackTimer) ackTimer = setTimeout(sendAck, 5000);
  }

  function sendAck() {
    if (ackTimer) { clearTimeout(ackTimer); ackTimer = null; }
    if (!cfg.me || lastId <= ackedId) return;
    var upto = lastId;
    post('/ack', {me: cfg.me, ack: upto}).then(function (r) {
      if (r.status === 204 && upto > ackedId) ackedId = upto;
    }, function () { /* the next ack or the reconnection carries it */ });
  }

  window.addEventListener('pagehide', function () {
    leaving = true;
    if (cfg.me && lastId > ackedId && navigator.sendBeacon) {
      navigator.sendBeacon('/ack', new URLSearchParams({me: cfg.me, ack: String(lastId)}));
      ackedId = lastId;
    }
  });

  function handle(text) {
    var nl = text.indexOf('\n');
    var head = nl < 0 ? text : text.slice(0, nl);
    var payload = nl < 0 ? '' : text.slice(nl + 1);
    var w = head.split(' ');
    if (w[0] !== 'msg') return;
    switch (w[1]) {
      case 'update':
        if (/^(online|offline|away|busy)$/.test(w[2])) setPresence(w[3], w[2], payload);
        break;
      case 'updates':
        // one "<state> <user>" per line: each is what "msg update" would say,
        // without the status text; a small bundle reads the rows again for
        // it, a big one (a storm in a large group) keeps the texts shown
        var lines = payload.split('\n').filter(function (line) { return line; });
        lines.forEach(function (line) {
          var v = line.split(' ');
          if (/^(online|offline|away|busy)$/.test(v[0])) setPresence(v[1], v[0], undefined);
        });
        var texts = lines.some(function (line) { return !/^offline /.test(line); });
        if (texts && lines.length <= BUNDLE_RESYNC) scheduleSync();
        break;
      case 'refresh':
        scheduleSync();
        break;
      case 'initChat':
        openChat(w[2], false);
        break;
      case 'chat':
        incoming(w[2], w[3], payload);
        break;
      case 'message':
        if (cfg.mode === 'home') reloadMessages();
        else notify((w[2] || 'someone') + ' left you a message: see your home page.');
        break;
      case 'wireless':
        if (w[2] === 'unavailable') {
          notify('The text to ' + w[3] + "'s handset could not be delivered.", 'error');
        }
        break;
      case 'call':  // browser calls: static/calls.js
        if (calls) calls.frame(w, payload);
        break;
      case 'notice':  // from the server's operator (docs/operations.md, "Operators")
        notify('Notice from the operator: ' + payload);
        break;
      case 'bye':
        if (w[2] === 'shutdown' && !cfg.guest) {
          // the server is restarting: come back once it is up (spread over a
          // few seconds, so that a whole server's pages do not come at once)
          if (es) { es.close(); es = null; }
          status('The server is restarting: reconnecting…', 'warn');
          setTimeout(recover, 1000 + Math.random() * 4000);
          break;
        }
        gone(w[2] || 'ended');
        break;
    }
  }

  // -- the visitor's own state: idle detection -----------------------------------------
  //
  // The state the user chose (available, or busy / away with the home page's
  // form) is reported with POST /api/status.  While it is "available", the
  // page reports "away" after data-idle seconds (--away-after, 300 by
  // default) without input or while the tab is hidden, and the chosen state
  // again on the next input.  Only the page that holds the session's
  // heartbeat reports; the server never changes the state behind its back.

  var idleMs = Math.max(0.5, parseFloat(main.getAttribute('data-idle')) || 300) * 1000;
  var chosen = main.getAttribute('data-state') === 'busy' ? 'busy' : 'available';
  var chosenText = main.getAttribute('data-text') || '';
  // what the server has for this session (the page was made with it)
  var reported = main.getAttribute('data-state') || 'available', reportedText = chosenText;
  var lastInput = Date.now(), sentOnce = false;

  function wanted() {
    if (chosen !== 'available') return chosen;
    return document.hidden || Date.now() - lastInput >= idleMs ? 'away' : 'available';
  }

  function reportState(force) {
    if (!cfg.me || !es || ended) return;
    var state = wanted();
    if (state === reported && chosenText === reportedText &&
        !(force && (sentOnce || state !== 'available' || chosenText))) return;
    reported = state; reportedText = chosenText; sentOnce = true;
    main.setAttribute('data-my-state', state);
    post('/api/status', {me: cfg.me, state: state, text: chosenText}).then(function (r) {
      if (r.status !== 200) {
        return errorText(r).then(function (t) { notify('Your state: ' + t, 'error'); });
      }
    }, function () { reported = ''; });  // not sent: the next check tries again
  }

  function onInput() {
    lastInput = Date.now();
    if (reported === 'away' && chosen === 'available') reportState(false);
  }
  ['mousemove', 'mousedown', 'keydown', 'wheel', 'touchstart', 'scroll'].forEach(function (n) {
    window.addEventListener(n, onInput, {passive: true, capture: true});
  });
  document.addEventListener('visibilitychange', function () { reportState(false); });
  setInterval(function () { reportState(false); }, Math.min(idleMs / 4, 15000));

  var stateForm = document.getElementById('state-form');
  if (stateForm) {
    stateForm.addEventListener('submit', function (e) {
      e.preventDefault();
      chosen = stateForm.elements.state.value;
      chosenText = stateForm.elements.text.value.trim();
      lastInput = Date.now();
      reported = '';  // send it even if it looks the same
      if (es) reportState(false);
      notify(es ? 'Your state is ' + chosen + '.' : 'Your state is sent once the page is live.');
    });
  }

  // -- chat boxes --------------------------------------------------------------------

  function findBox(peer) {
    var boxes = chatsEl.querySelectorAll('.chatbox');
    for (var i = 0; i < boxes.length; i++) {
      if (boxes[i].getAttribute('data-peer') === peer) return boxes[i];
    }
    return null;
  }

  function openChat(peer, focus) {
    if (!peer || peer === cfg.me) return null;
    var box = findBox(peer);
    if (!box) {
      box = el('section', 'chatbox');
      box.setAttribute('data-peer', peer);
      var head = el('header');
      head.appendChild(el('strong', '', peer));
      var close = el('button', 'close', '×');
      close.type = 'button';
      close.setAttribute('aria-label', 'Close the chat with ' + peer);
      close.addEventListener('click', function () { box.remove(); });
      head.appendChild(close);
      box.appendChild(head);
      var log = el('ol', 'log');
      log.setAttribute('aria-live', 'polite');
      box.appendChild(log);
      var form = el('form', 'say');
      var input = el('input');
      input.name = 'msg';
      input.maxLength = 4096;
      input.autocomplete = 'off';
      input.placeholder = 'Write to ' + peer;
      input.setAttribute('aria-label', 'Message to ' + peer);
      var send = el('button', '', 'Send');
      send.type = 'submit';
      form.appendChild(input);
      form.appendChild(send);
      form.addEventListener('submit', function (e) {
        e.preventDefault();
        var text = input.value;
        if (!text.trim()) return;
        input.value = '';
        sendChat(peer, text, box);
      });
      box.appendChild(form);
      chatsEl.appendChild(box);
    }
    if (focus) box.querySelector('input').focus();
    return box;
  }

  function line(box, who, text, cls) {
    var li = el('li', cls);
    li.appendChild(el('b', '', who));
    li.appendChild(el('span', 'text', text));
    var log = box.querySelector('.log');
    log.appendChild(li);
    log.scrollTop = log.scrollHeight;
    return li;
  }

  function note(box, text) {
    var log = box.querySelector('.log');
    var li = el('li', 'note', text);
    log.appendChild(li);
    log.scrollTop = log.scrollHeight;
  }

  function incoming(from, msgid, text) {
    if (!from) return;
    if (msgid) {
      if (seenChats[msgid]) return;
      seenChats[msgid] = true;
    }
    var box = openChat(from, false);
    if (box) line(box, from, text, 'theirs');
  }

  function nextSeq() {
    var s = Date.now() * 1000 + Math.floor(Math.random() * 1000);
    if (s <= lastSeq) s = lastSeq + 1;
    lastSeq = s;
    return String(s);
  }

  function sendChat(peer, text, box) {
    var seq = nextSeq();  // the same seq on every retry: delivered once
    var li = line(box, cfg.me, text, 'mine pending');
    function mark(words, cls) {
      li.classList.remove('pending');
      if (cls) li.classList.add(cls);
      if (words) li.appendChild(el('small', '', ' ' + words));
    }
    function attempt(n) {
      post('/chat', {me: cfg.me, to: peer, msg: text, seq: seq}).then(function (r) {
        if (r.status === 202) {
          return r.json().then(function (j) {
            if (j.delivered === 'stored') mark('(kept in ' + peer + "'s message box)", 'stored');
            else mark('', 'sent');
          });
        }
        if (r.status >= 500 && n < 4) return retry(n);
        if (r.status === 403) { mark('(not sent)', 'failed'); recover(); return; }
        return errorText(r).then(function (t) { mark('(not sent: ' + t + ')', 'failed'); });
      }, function () {
        if (n < 4) retry(n);
        else mark('(not sent: the server cannot be reached)', 'failed');
      });
    }
    function retry(n) { setTimeout(function () { attempt(n + 1); }, 500 * Math.pow(2, n)); }
    attempt(0);
  }

  function startChat(peer) {
    ensureSession().then(function (ok) {
      if (!ok) return;
      var box = openChat(peer, true);
      if (!box) return;
      var q = new URLSearchParams({me: cfg.me, to: peer});
      fetch('/initchat?' + q.toString(), {credentials: 'same-origin'}).then(function (r) {
        if (r.status === 204) return;
        if (r.status === 200) {
          return r.json().then(function (j) {
            if (j.online === false) note(box, peer + ' is offline: leave a message instead.');
          });
        }
        if (r.status === 403) { recover(); return; }
        return errorText(r).then(function (t) { note(box, t); });
      }, function () { note(box, 'The server cannot be reached.'); });
    });
  }

  function textHandset(peer) {
    ensureSession().then(function (ok) {
      if (!ok) return;
      post('/api/wireless/text', {me: cfg.me, to: peer}).then(function (r) {
        if (r.status === 202) {
          notify('A text with a link to chat is on its way to ' + peer + "'s handset.");
          return;
        }
        return errorText(r).then(function (t) {
          if (r.status === 404 && /endpoint/.test(t)) {
            t = 'Texting handsets is not available on this server.';
          }
          notify(t, 'error');
        });
      }, function () { notify('The server cannot be reached.', 'error'); });
    });
  }

  // -- leaving a message (communications page) -------------------------------------

  var messageForm = document.getElementById('message-form');
  if (messageForm) {
    messageForm.addEventListener('submit', function (e) {
      e.preventDefault();
      var to = messageForm.elements.namedItem('to').value;
      var textEl = messageForm.elements.namedItem('text');
      var result = messageForm.querySelector('.result');
      var submit = messageForm.querySelector('button[type=submit]');
      submit.disabled = true;
      post('/api/messages', {to: to, text: textEl.value}).then(function (r) {
        submit.disabled = false;
        if (r.status === 201) {
          textEl.value = '';
          result.className = 'result ok';
          result.textContent = 'Your message is in ' + to + "'s message box.";
          return;
        }
        return errorText(r).then(function (t) {
          result.className = 'result error';
          result.textContent = t;
        });
      }, function () {
        submit.disabled = false;
        result.className = 'result error';
        result.textContent = 'The server cannot be reached: try again.';
      });
    });
  }

  // -- messages (home page) ----------------------------------------------------------

  var messagesEl = document.getElementById('messages');

  function messageItem(m) {
    var li = el('li', 'message' + (m.read ? '' : ' unread'));
    li.setAttribute('data-id', String(m.id));
    var meta = el('div', 'meta');
    var from = el('strong', 'from');
    if (m.from !== 'anonymous' && m.from.indexOf('guest.') !== 0) {
      from.appendChild(link(m.from, '/call?name=' + encodeURIComponent(m.from)));
    } else {
      from.textContent = m.from;
    }
    meta.appendChild(from);
    meta.appendChild(document.createTextNode(' '));
    var t = el('time', '', new Date(m.time * 1000).toLocaleString([], {
      dateStyle: 'medium', timeStyle: 'short'}));
    t.setAttribute('datetime', new Date(m.time * 1000).toISOString());
    meta.appendChild(t);
    if (!m.read) {
      meta.appendChild(document.createTextNode(' '));
      var form = el('form', 'inline read');
      form.method = 'post';
      form.action = '/home/read';
      var id = el('input');
      id.type = 'hidden';
      id.name = 'id';
      id.value = String(m.id);
      var b = el('button', 'small', 'Mark read');
      b.type = 'submit';
      form.appendChild(id);
      form.appendChild(b);
      meta.appendChild(form);
    }
    li.appendChild(meta);
    li.appendChild(el('p', 'text', m.text));
    return li;
  }

  function reloadMessages() {
    if (!messagesEl) return;
    fetch('/api/messages?' + new URLSearchParams({me: cfg.me}).toString(),
          {credentials: 'same-origin'}).then(function (r) {
      if (r.status !== 200) return;
      return r.json().then(function (j) {
        messagesEl.textContent = '';
        j.messages.forEach(function (m) { messagesEl.appendChild(messageItem(m)); });
        if (!j.messages.length) messagesEl.appendChild(el('li', 'empty', 'No messages.'));
        var unread = document.getElementById('unread');
        if (unread) unread.textContent = String(j.unread);
      });
    }, function () { /* the next message reloads */ });
  }

  if (messagesEl) {
    messagesEl.addEventListener('submit', function (e) {
      var form = e.target;
      if (!form.classList || !form.classList.contains('read')) return;
      e.preventDefault();
      var id = form.elements.namedItem('id').value;
      post('/api/messages/' + encodeURIComponent(id) + '/read', {me: cfg.me})
        .then(function (r) {
          if (r.status === 204) reloadMessages();
          else form.submit();
        }, function () { form.submit(); });
    });
  }

  // -- browser calls (static/calls.js) ---------------------------------------------------

  var calls = window.PresenceCalls ? window.PresenceCalls({
    me: function () { return cfg.me; },
    post: post,
    errorText: errorText,
    ensureSession: ensureSession,
    place: function (panel) {
      if (chatsEl) chatsEl.parentNode.insertBefore(panel, chatsEl);
      else main.appendChild(panel);
    }
  }) : null;

  // -- start ---------------------------------------------------------------------------

  function start() {
    status('Connecting…', '');
    ensureSession().then(function (ok) {
      if (!ok) {
        if (cfg.mode === 'call' && !pollTimer) pollTimer = setInterval(sync, 2000);
        return;
      }
      if (pollTimer) { clearInterval(pollTimer); pollTimer = null; }
      return sync().then(function (ok2) { if (ok2 !== false && !ended) connect(); });
    });
  }

  start();
})();
