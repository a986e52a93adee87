/*
 * The synchronisation objects of ah.task: events, semaphores and bounded
 * queues.  Each keeps its waiting tasks in FIFO lists, and hands what it
 * gives (a permit, an item, a free slot) straight to the first waiter, so
 * that a late arrival cannot overtake a waiting task and nothing handed to
 * a task that is cancelled meanwhile is lost (see task.c).
 *
 * Relies on the scheduler core (task.c).
 */
#include "sched.h"

#include <string.h>

static char EVENT_MT, SEM_MT, QUEUE_MT;


typedef struct ah_event {
  ah_link waiters;
  int set;
} ah_event;

typedef struct ah_sem {
  ah_link waiters;
  lua_Integer count;
} ah_sem;

/* The ring of items is the user value table, slots 1..cap. */
typedef struct ah_queue {
  ah_link poppers, pushers;
  lua_Integer cap, head, len;
} ah_queue;

static const ah_op event_op = {"event", ah__task_unwait, NULL, NULL};
static const ah_op sem_op = {"semaphore", ah__task_unwait, NULL, NULL};
static const ah_op pop_op = {"queue pop", ah__task_unwait, NULL, NULL};
static const ah_op push_op = {"queue push", ah__task_unwait, NULL, NULL};

static ah_task *first_waiter(ah_link *l) {
  return link_empty(l) ? NULL : container_of(l->next, ah_task, link);
}

static void *new_obj(lua_State *L, size_t size, int nuv, const void *mtkey) {
  void *p = lua_newuserdatauv(L, size, nuv);
  memset(p, 0, size);
  lua_rawgetp(L, LUA_REGISTRYINDEX, mtkey);
  lua_setmetatable(L, -2);
  return p;
}

static int sync_event(lua_State *L) {
  ah_event *e = new_obj(L, sizeof(ah_event), 0, &EVENT_MT);
  link_init(&e->waiters);
  return 1;
}

static int ev_set(lua_State *L) {
  ah_event *e = ah__arg_udata(L, 1, "agenthost.event", "event:set", "an event");
  ah_sched *S = ah__sched_get(L);
  ah_task *w;
  e->set = 1;
  while ((w = first_waiter(&e->waiters))) {
    link_remove(&w->link);
    ah__task_wake(S, w, 0, 0);
  }
  return 0;
}

static int ev_clear(lua_State *L) {
  ((ah_event *)ah__arg_udata(L, 1, "agenthost.event", "event:clear", "an event"))->set = 0;
  return 0;
}

static int ev_is_set(lua_State *L) {
  lua_pushboolean(L, ((ah_event *)ah__arg_udata(L, 1, "agenthost.event", "event:is_set", "an event"))->set);
  return 1;
}

static int ev_wait(lua_State *L) {
  ah_event *e = ah__arg_udata(L, 1, "agenthost.event", "event:wait", "an event");
  if (e->set) return 0;
  return ah__task_wait(L, "event:wait", &e->waiters, 1, &event_op, e);
}

static int sync_semaphore(lua_State *L) {
  lua_Integer n = ah__arg_integer(L, 1, "task.semaphore", "n", 0, LUA_MAXINTEGER);
  ah_sem *s;
  s = new_obj(L, sizeof(ah_sem), 0, &SEM_MT);
  link_init(&s->waiters);
  s->count = n;
  return 1;
}

static int sem_acquire(lua_State *L) {
  ah_sem *s = ah__arg_udata(L, 1, "agenthost.semaphore", "semaphore:acquire", "a semaphore");
  if (s->count > 0 && link_empty(&s->waiters)) {
    s->count--;
    return 0;
  }
  return ah__task_wait(L, "semaphore:acquire", &s->waiters, 1, &sem_op, s);
}

static int sem_try_acquire(lua_State *L) {
  ah_sem *s = ah__arg_udata(L, 1, "agenthost.semaphore", "semaphore:try_acquire", "a semaphore");
  int ok = s->count > 0 && link_empty(&s->waiters);
  if (ok) s->count--;
  lua_pushboolean(L, ok);
  return 1;
}

/* A permit goes straight to the first waiter, so waiters are served in
 * FIFO order and a late arrival cannot overtake them. */
static int sem_release(lua_State *L) {
  ah_sem *s = ah__arg_udata(L, 1, "agenthost.semaphore", "semaphore:release", "a semaphore");
  ah_task *w = first_waiter(&s->waiters);
  if (w) {
    link_remove(&w->link);
    ah__task_wake(ah__sched_get(L), w, 0, 0);
  } else {
    s->count++;
  }
  return 0;
}

static int sem_available(lua_State *L) {
  lua_pushinteger(L, ((ah_sem *)ah__arg_udata(L, 1, "agenthost.semaphore", "semaphore:available", "a semaphore"))->count);
  return 1;
}

static void queue_new(lua_State *L, lua_Integer cap) {
  ah_queue *q = new_obj(L, sizeof(ah_queue), 1, &QUEUE_MT);
  link_init(&q->poppers);
  link_init(&q->pushers);
  q->cap = cap;
  lua_createtable(L, cap < 1024 ? (int)cap : 1024, 0);
  lua_setiuservalue(L, -2, 1);
}

static int sync_queue(lua_State *L) {
  lua_Integer cap = ah__arg_integer(L, 1, "task.queue", "capacity", 1, 1 << 26);
  queue_new(L, cap);
  return 1;
}

/* Appends the value on the top of L to the ring (table at ring). */
static void ring_put(lua_State *L, ah_queue *q, int ring) {
  lua_rawseti(L, ring, (q->head + q->len) % q->cap + 1);
  q->len++;
}

/* Queues the value on the top of L without waiting (to the first waiting
 * popper, or into the ring): pops it and returns 1, or leaves it and
 * returns 0 when the queue is full. */
static int queue_offer(lua_State *L, int qidx) {
  ah_queue *q = lua_touserdata(L, qidx);
  ah_task *w;
  qidx = lua_absindex(L, qidx);
  if ((w = first_waiter(&q->poppers))) { /* hand it over */
    link_remove(&w->link);
    lua_xmove(L, w->co, 1);
    ah__task_wake(ah__sched_get(L), w, 1, 0);
    return 1;
  }
  if (q->len < q->cap) {
    lua_getiuservalue(L, qidx, 1);
    lua_insert(L, -2);
    ring_put(L, q, -2);
    lua_pop(L, 1);
    return 1;
  }
  return 0;
}


static void check_item(lua_State *L, const char *what) {
  ah__arg_udata(L, 1, "agenthost.queue", what, "a queue");
  if (lua_isnoneornil(L, 2))
    ah__error_raise(L, "invalid_argument", 0,
                    "%s: nil cannot be queued; wrap it in a table", what);
  lua_settop(L, 2);
}

static int q_push(lua_State *L) {
  ah_queue *q;
  check_item(L, "queue:push");
  if (queue_offer(L, 1)) return 0;
  q = lua_touserdata(L, 1);
  /* The item stays at 2 until a slot is free. */
  return ah__task_wait(L, "queue:push (on a full queue)", &q->pushers, 2,
                       &push_op, q);
}

/* queue:try_push(v) -> true, or false when the queue is full */
static int q_try_push(lua_State *L) {
  check_item(L, "queue:try_push");
  lua_pushboolean(L, queue_offer(L, 1));
  return 1;
}

static int q_pop_now(lua_State *L, ah_queue *q) {
  ah_task *w;
  lua_getiuservalue(L, 1, 1);
  lua_rawgeti(L, -1, q->head + 1);
  lua_pushnil(L);
  lua_rawseti(L, -3, q->head + 1);
  q->head = (q->head + 1) % q->cap;
  q->len--;
  /* A slot is free: the longest-waiting pusher's item moves in. */
  if ((w = first_waiter(&q->pushers))) {
    link_remove(&w->link);
    lua_pushvalue(w->co, 2);
    lua_xmove(w->co, L, 1);
    ring_put(L, q, -3);
    ah__task_wake(ah__sched_get(L), w, 0, 0);
  }
  return 1;
}

static int q_pop(lua_State *L) {
  ah_queue *q = ah__arg_udata(L, 1, "agenthost.queue", "queue:pop", "a queue");
  if (q->len > 0) return q_pop_now(L, q);
  return ah__task_wait(L, "queue:pop (on an empty queue)", &q->poppers, 1,
                       &pop_op, q);
}

static int q_try_pop(lua_State *L) {
  ah_queue *q = ah__arg_udata(L, 1, "agenthost.queue", "queue:try_pop", "a queue");
  if (q->len > 0) return q_pop_now(L, q);
  lua_pushnil(L);
  return 1;
}

static int q_len(lua_State *L) {
  lua_pushinteger(L, ((ah_queue *)ah__arg_udata(L, 1, "agenthost.queue", "queue:len", "a queue"))->len);
  return 1;
}

void ah__sync_init(lua_State *L) {
  static const luaL_Reg ev_methods[] = {{"set", ev_set},
                                        {"clear", ev_clear},
                                        {"wait", ev_wait},
                                        {"is_set", ev_is_set},
                                        {NULL, NULL}};
  static const luaL_Reg sem_methods[] = {{"acquire", sem_acquire},
                                         {"try_acquire", sem_try_acquire},
                                         {"release", sem_release},
                                         {"available", sem_available},
                                         {NULL, NULL}};
  static const luaL_Reg q_methods[] = {{"push", q_push},
                                       {"try_push", q_try_push},
                                       {"pop", q_pop},
                                       {"try_pop", q_try_pop},
                                       {"len", q_len},
                                       {NULL, NULL}};
  ah__metatable(L, "agenthost.event", ev_methods, NULL, NULL, &EVENT_MT);
  ah__metatable(L, "agenthost.semaphore", sem_methods, NULL, NULL, &SEM_MT);
  ah__metatable(L, "agenthost.queue", q_methods, NULL, NULL, &QUEUE_MT);
}

const luaL_Reg ah__sync_fns[] = {{"event", sync_event},
                                 {"semaphore", sync_semaphore},
                                 {"queue", sync_queue},
                                 {NULL, NULL}};
