// The page of `avatar-operator view`: joins a session's room with a
// subscribe-only token from the CLI's server, plays the avatar, and shows the
// session's status (polled from the server, which reads the API server) and
// what the receiver gets (WebRTC getStats). Bundled by `make viewer`; nothing
// is loaded from elsewhere when the page runs.
import { Room, RoomEvent, Track } from 'livekit-client';

const STATUS_EVERY_MS = 2000;
const STATS_EVERY_MS = 1000;
const LIST_EVERY_MS = 3000;
const REJOIN_AFTER_MS = 2000;

const $ = (id) => document.getElementById(id);

// What the page knows, for a person reading the panel and for the browser test.
const state = { session: null, status: null, stats: {}, connection: 'connecting', room: null };
window.avatarViewer = state;

async function api(path, options) {
  const resp = await fetch(path, { cache: 'no-store', ...options });
  const body = await resp.json().catch(() => ({}));
  if (!resp.ok) throw new Error(body.error || `${path}: HTTP ${resp.status}`);
  return body;
}

function showError(message) {
  $('error').hidden = !message;
  $('error').textContent = message || '';
}

function cell(row, text) {
  const td = row.insertCell();
  td.textContent = text ?? '–';
  return td;
}

// --- the session list (no name given) -------------------------------------

async function listSessions() {
  try {
    const { namespace, sessions } = await api('api/sessions');
    $('namespace').textContent = namespace;
    const body = $('sessions').tBodies[0];
    body.replaceChildren();
    for (const s of sessions) {
      const row = body.insertRow();
      const link = document.createElement('a');
      link.href = `?session=${encodeURIComponent(s.name)}`;
      link.textContent = s.name;
      row.insertCell().append(link);
      cell(row, s.room);
      cell(row, s.phase);
      cell(row, s.mode);
      cell(row, s.ready ? 'True' : 'False');
    }
    $('no-sessions').hidden = sessions.length > 0;
    showError('');
  } catch (e) {
    showError(e.message);
  }
}

// --- one session ----------------------------------------------------------

function renderStatus(s) {
  state.status = s;
  $('phase').textContent = s.phase;
  $('phase').className = `phase ${s.phase}`;
  $('mode').textContent = s.mode ?? '–';
  $('room').textContent = s.room ?? '–';
  $('avatar').textContent = s.avatarIdentity ?? '–';
  const body = $('conditions').tBodies[0];
  body.replaceChildren();
  for (const c of s.conditions) {
    const row = body.insertRow();
    row.title = c.message ?? '';
    cell(row, c.type);
    cell(row, c.status);
    cell(row, c.reason);
  }
}

async function pollStatus(name) {
  try {
    renderStatus(await api(`api/sessions/${encodeURIComponent(name)}`));
    showError('');
  } catch (e) {
    showError(e.message);
  }
}

function setConnection(text) {
  state.connection = text;
  $('connection').textContent = text;
}

function inbound(report, kind) {
  for (const r of report.values()) {
    if (r.type === 'inbound-rtp' && r.kind === kind) return r;
  }
  return null;
}

// kbit/s between two inbound-rtp reports of the same stream.
function bitrate(now, before) {
  if (!before || now.timestamp <= before.timestamp) return null;
  return (8 * (now.bytesReceived - before.bytesReceived)) / (now.timestamp - before.timestamp);
}

async function trackStats(track, kind, previous) {
  const receiver = track?.receiver;
  if (!receiver) return null;
  const report = await receiver.getStats();
  const rtp = inbound(report, kind);
  if (!rtp) return null;
  const codec = rtp.codecId ? report.get(rtp.codecId) : null;
  return { rtp, codec: codec?.mimeType ?? null, kbps: bitrate(rtp, previous?.rtp) };
}

async function sampleStats(tracks) {
  const video = await trackStats(tracks.video, 'video', state.stats.video);
  const audio = await trackStats(tracks.audio, 'audio', state.stats.audio);
  state.stats = { video, audio };
  const v = video?.rtp;
  $('stat-fps').textContent = v?.framesPerSecond != null ? `${v.framesPerSecond} fps` : '–';
  $('stat-resolution').textContent = v?.frameWidth ? `${v.frameWidth}×${v.frameHeight}` : '–';
  $('stat-video-codec').textContent = video?.codec ?? '–';
  $('stat-video-bitrate').textContent = video?.kbps != null ? `${Math.round(video.kbps)} kbit/s` : '–';
  $('stat-dropped').textContent = v ? `${v.framesDropped ?? 0} of ${v.framesReceived ?? 0}` : '–';
  $('stat-audio-codec').textContent = audio?.codec ?? '–';
  $('stat-audio-bitrate').textContent = audio?.kbps != null ? `${Math.round(audio.kbps)} kbit/s` : '–';
}

function attach(room, tracks, avatarIdentity) {
  room.on(RoomEvent.TrackSubscribed, (track, _pub, participant) => {
    // The avatar publishes on behalf of the agent: its tracks are the ones to show.
    if (participant.identity !== avatarIdentity) return;
    if (track.kind === Track.Kind.Video) {
      tracks.video = track;
      track.attach($('video'));
      $('waiting').hidden = true;
    } else if (track.kind === Track.Kind.Audio) {
      tracks.audio = track;
      track.attach($('audio'));
    }
  });
  room.on(RoomEvent.TrackUnsubscribed, (track) => {
    track.detach();
    if (track === tracks.video) {
      tracks.video = null;
      $('waiting').hidden = false;
    }
    if (track === tracks.audio) tracks.audio = null;
  });
  // Browsers keep audio off until the person interacts with the page.
  room.on(RoomEvent.AudioPlaybackStatusChanged, () => {
    $('unmute').hidden = room.canPlaybackAudio;
  });
  $('unmute').onclick = () => room.startAudio().then(() => { $('unmute').hidden = room.canPlaybackAudio; });
}

async function join(name, tracks) {
  setConnection('connecting');
  // A fresh token for every join: each lives minutes.
  const grant = await api(`api/sessions/${encodeURIComponent(name)}/token`, { method: 'POST' });
  const room = new Room({ adaptiveStream: false, dynacast: false });
  state.room = room;
  attach(room, tracks, grant.avatarIdentity);
  room.on(RoomEvent.Reconnecting, () => setConnection('reconnecting'));
  room.on(RoomEvent.Reconnected, () => setConnection('connected'));
  room.on(RoomEvent.Disconnected, () => {
    setConnection('disconnected');
    $('waiting').hidden = false;
    const phase = state.status?.phase;
    if (phase !== 'Succeeded' && phase !== 'Failed') setTimeout(() => rejoin(name, tracks), REJOIN_AFTER_MS);
  });
  await room.connect(grant.url, grant.token);
  setConnection('connected');
  $('unmute').hidden = room.canPlaybackAudio;
}

function rejoin(name, tracks) {
  join(name, tracks).catch((e) => {
    setConnection('disconnected');
    showError(e.message);
    setTimeout(() => rejoin(name, tracks), REJOIN_AFTER_MS);
  });
}

function watch(name) {
  state.session = name;
  $('watch').hidden = false;
  $('session-name').textContent = name;
  document.title = `${name} · avatar-operator view`;
  const tracks = { video: null, audio: null };
  pollStatus(name);
  setInterval(() => pollStatus(name), STATUS_EVERY_MS);
  setInterval(() => sampleStats(tracks).catch(() => {}), STATS_EVERY_MS);
  rejoin(name, tracks);
}

function main() {
  const name = new URLSearchParams(location.search).get('session');
  $('where').textContent = location.host;
  if (name) {
    watch(name);
  } else {
    $('picker').hidden = false;
    listSessions();
    setInterval(listSessions, LIST_EVERY_MS);
  }
}

main();
